"""Runs never lose or mix data: resume from the run's own config, one config per run folder, the whole
metrics history and wall time across resumes, one process per sweep point, atomic and checked checkpoints."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import Crash, crash_at_epoch, kasa_train_cli, tiny_cls
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kasa.config import CONF_DIR
from kasa.errors import ConfigError
from kasa.recipe import run
from kasa.runs import checkpoints as runs
from kasa.runs.hashing import config_hash

# 4 batches an epoch, a metrics row every step, dropout on (resume must restore the random streams too)
TINY = ("trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "benchmark.batch_size=8", "method.r=4", "method.dropout=0.1")


def _cfg(tiny_bert_dir: Path | None, *overrides: str, tiny: bool = True):
    model = tiny_cls(tiny_bert_dir) if tiny_bert_dir else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*model, *(TINY if tiny else ()), *overrides])


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _same_rows(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert [(r["epoch"], r["step"]) for r in a] == [(r["epoch"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if ra[k] or rb[k]:
                assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-5, abs=1e-6), (k, ra, rb)


class CrashAtBatch(L.Callback):
    """Kills a run in the middle of ``epoch`` (after ``batch`` steps of it were logged)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise Crash("simulated interruption")


@pytest.fixture(scope="module")
def full(tiny_bert_dir, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted 2-epoch run: the reference every resumed run must end equal to."""
    d = tmp_path_factory.mktemp("full")
    return d, run(_cfg(tiny_bert_dir), run_dir=d)


@pytest.fixture(scope="module")
def crashed(tiny_bert_dir, tmp_path_factory) -> Path:
    """The same run killed at the start of epoch 1 (last.ckpt and best-epoch=0.ckpt of epoch 0 on disk)."""
    d = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.raises(Crash):
        run(_cfg(tiny_bert_dir), run_dir=d, callbacks=[crash_at_epoch(1)])
    return d


def _copy(crashed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(crashed, tmp_path / "run"))


# -- 1. resume=<run dir> continues the run's own config ----------------------------------------------------
def test_resume_dir_uses_the_runs_own_config_and_refuses_changing_overrides(tiny_bert_dir, full, crashed,
                                                                            tmp_path, monkeypatch, capsys):
    part = _copy(crashed, tmp_path)
    # the resume command (kasa-train's entry point, in this process) names nothing but the folder: defaults
    # (10 epochs, the real MiniLM) must not leak in
    code = kasa_train_cli(monkeypatch, f"resume={part}")
    assert code == 0, capsys.readouterr().err[-2000:]
    # Hydra's files of the resume command go inside the run folder (checked now: a later command in the same
    # second shares Hydra's time-named folder, and a failing one removes it)
    assert list((part / "resumes").glob("*/.hydra"))
    resumed = json.loads((part / "results.json").read_text())
    assert resumed["config"]["trainer"]["max_epochs"] == 2 and resumed["config"]["model"]["name_or_path"] == str(
        tiny_bert_dir)
    assert resumed["history"] == full[1]["history"] and resumed["config_hash"] == full[1]["config_hash"]
    assert resumed["resumed_from"] == str(part / "checkpoints" / "last.ckpt")
    # where that config came from: config.yaml, written before training began (the interrupted run had it)
    saved = OmegaConf.to_container(OmegaConf.load(crashed / "config.yaml"))
    assert saved == {**resumed["config"], "resume": None}
    assert (crashed / "config.yaml").read_text().startswith(f"# kasa run config (resolved), config_hash "
                                                            f"{full[1]['config_hash']}")
    # overrides that cannot change the result are taken; the finished run is then skipped
    again = run(_cfg(None, f"resume={part}", "trainer.enable_progress_bar=true", "trainer.max_epochs=2",
                     tiny=False), overrides=[f"resume={part}", "trainer.enable_progress_bar=true",
                                             "trainer.max_epochs=2"])
    assert again["skipped"] is True
    # one that changes what the run computes is refused, on the command line, in one line
    capsys.readouterr()
    code = kasa_train_cli(monkeypatch, f"resume={part}", "trainer.max_epochs=5")
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    err = [line for line in stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "trainer.max_epochs=5 (the run has 2)" in err[0], stderr[-2000:]
    assert json.loads((part / "results.json").read_text())["history"] == full[1]["history"]


def test_resume_of_a_folder_from_before_config_yaml_reads_hydras_copy(tiny_bert_dir, full, crashed, tmp_path):
    part = _copy(crashed, tmp_path)
    (part / ".hydra").mkdir()
    (part / "config.yaml").rename(part / ".hydra" / "config.yaml")
    resumed = run(_cfg(None, f"resume={part}", tiny=False), overrides=[f"resume={part}"])
    assert resumed["history"] == full[1]["history"] and resumed["config_hash"] == full[1]["config_hash"]


def test_python_resume_with_another_config_names_the_difference(tiny_bert_dir, crashed, tmp_path):
    part = _copy(crashed, tmp_path)
    with pytest.raises(ConfigError, match=r"differs from the run's .* in method\.r \(8 given, 4 in the run\)"):
        run(_cfg(tiny_bert_dir, f"resume={part}", "method.r=8"))


def test_checkpoint_of_another_config_is_refused(tiny_bert_dir, crashed, tmp_path):
    other = tmp_path / "other" / "checkpoints"
    other.mkdir(parents=True)
    shutil.copy(crashed / "checkpoints" / "last.ckpt", other / "last.ckpt")
    ckpt = torch.load(other / "last.ckpt", weights_only=True)
    assert ckpt["kasa_run"]["config_hash"] == config_hash(_cfg(tiny_bert_dir))
    with pytest.raises(ConfigError, match="belongs to another config"):
        run(_cfg(tiny_bert_dir, "method.r=8", "resume=last"), run_dir=other.parent)


# -- 2. one config per run folder --------------------------------------------------------------------------
def test_default_run_folders_carry_the_config_hash(tiny_bert_dir):
    folders = set()
    for r in (4, 16):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[*tiny_cls(tiny_bert_dir), f"method.r={r}"],
                          return_hydra_config=True)
        run_dir = cfg.hydra.run.dir  # resolved as Hydra resolves it: two runs of one second differ by the hash
        key = config_hash(cfg)
        assert f"outputs/{cfg.run_name}-{key}/" in run_dir
        cfg.hydra.job.num = 3
        assert cfg.hydra.sweep.subdir == f"3-{cfg.run_name}-{key}"
        folders.add(run_dir.rsplit("/", 1)[0])
    assert len(folders) == 2


def test_two_configs_never_share_a_folder(tiny_bert_dir, tmp_path):
    first = run(_cfg(tiny_bert_dir, "trainer.max_epochs=1"), run_dir=tmp_path)
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"holds another config's run .*method\.r \(16 here, 4 there\)"):
        run(_cfg(tiny_bert_dir, "trainer.max_epochs=1", "method.r=16"), run_dir=tmp_path)
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "results.json").read_text())["config_hash"] == first["config_hash"]
    # the same config again without resume: refused too (resume=auto skips it)
    with pytest.raises(ConfigError, match="already holds this config's results; resume=auto"):
        run(_cfg(tiny_bert_dir, "trainer.max_epochs=1"), run_dir=tmp_path)
    assert run(_cfg(tiny_bert_dir, "trainer.max_epochs=1", "resume=auto"), run_dir=tmp_path)["skipped"] is True


def test_interrupted_folder_is_not_restarted_by_accident(tiny_bert_dir, crashed, tmp_path):
    part = _copy(crashed, tmp_path)
    with pytest.raises(ConfigError, match="holds an interrupted run of this config .*resume=last"):
        run(_cfg(tiny_bert_dir), run_dir=part)


# -- 3. the whole history and wall time across resumes ---------------------------------------------------
def test_resume_in_place_keeps_the_metrics_history_and_total_wall_time(tiny_bert_dir, full, tmp_path):
    sweep = tmp_path / "sweep"
    cfg = _cfg(tiny_bert_dir, f"sweep_dir={sweep}")
    point = sweep / f"{cfg.run_name}-{config_hash(cfg)}"
    with pytest.raises(Crash):  # killed in the middle of epoch 1: its first two steps are logged, then lost
        run(cfg, callbacks=[CrashAtBatch(1, 2)])
    assert [r["step"] for r in _rows(point) if r["train/loss"]][-2:] == ["4", "5"]
    first = torch.load(point / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = run(cfg)  # sweep_dir: resume=auto
    _same_rows(_rows(point), _rows(full[0]))  # epoch 0 kept, epoch 1's lost steps redone once, no duplicates
    first_wall = first["kasa_run"]["wall_time_s"]
    discarded = list((point / "logs").glob("metrics.discarded-*.csv"))
    assert len(discarded) == 1 and [r["step"] for r in csv.DictReader(discarded[0].open())] == ["4", "5"]
    assert resumed["history"] == full[1]["history"]
    (point_res,) = resumed["resumes"]
    assert (point_res["epoch"], point_res["step"]) == (0, 4) and point_res["wall_time_s"] == first_wall
    assert point_res["checkpoint"].endswith("last.ckpt") and time.strptime(point_res["time"], "%Y-%m-%dT%H:%M:%S")
    assert resumed["wall_time_s"] > first_wall > 0


# -- 4. one process per run folder ---------------------------------------------------------------------------
def _lock(point: Path, pid: int) -> None:
    point.mkdir(parents=True, exist_ok=True)
    (point / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                "started": "2026-01-01T00:00:00", "started_unix": time.time()}))


def test_a_live_lock_makes_a_second_process_skip_the_point(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    cfg = _cfg(tiny_bert_dir, f"sweep_dir={sweep}")
    point = sweep / f"{cfg.run_name}-{config_hash(cfg)}"
    # the lock's holder is another live process; this one (kasa-train's entry point, in the test process) is second
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(0.5)
        _lock(point, holder.pid)
        code = kasa_train_cli(monkeypatch, *tiny_cls(tiny_bert_dir), *TINY, f"sweep_dir={sweep}",
                              f"hydra.run.dir={tmp_path / 'hydra'}")
    finally:
        holder.kill()
        holder.wait()
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]  # so W&B agents and parallel launchers move on
    lines = [line for line in out.out.splitlines() if "[kasa]" in line]
    assert len(lines) == 1 and f"is being trained by pid {holder.pid}" in lines[0], out.out[-2000:]
    assert not (point / "checkpoints").exists() and (point / "run.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_bert_dir, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cfg = _cfg(tiny_bert_dir, f"sweep_dir={tmp_path}", "trainer.max_epochs=1")
    point = tmp_path / f"{cfg.run_name}-{config_hash(cfg)}"
    _lock(point, dead.pid)
    res = run(cfg)
    assert "skipped" not in res and res["metrics"]["final"]
    out = capsys.readouterr().out
    assert f"pid {dead.pid} on {socket.gethostname()}" in out and "taking the run over" in out
    assert not (point / "run.lock").exists()  # released at the end


# -- 5. atomic checkpoints; a checkpoint that does not load -------------------------------------------------
def test_checkpoint_write_that_fails_leaves_the_previous_file(tmp_path, monkeypatch):
    io = runs.AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, target)

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, target)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_training_writes_checkpoints_through_the_atomic_writer(tiny_bert_dir, tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append((Path(a), Path(b))), real_replace(a, b))[1])
    run(_cfg(tiny_bert_dir, "trainer.max_epochs=1"), run_dir=tmp_path)
    into = {b.name for a, b in renamed if a.parent == b.parent == tmp_path / "checkpoints"}
    assert {"last.ckpt", "best-epoch=0.ckpt"} <= into


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_checkpoint_that_does_not_load_is_set_aside(tiny_bert_dir, full, crashed, tmp_path, capsys, damage):
    part = _copy(crashed, tmp_path)
    last = part / "checkpoints" / "last.ckpt"
    if damage == "empty":  # best-epoch=0.ckpt (same config, same epoch) is the fallback
        last.write_bytes(b"")
    else:  # and without a fallback the run starts over
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        (part / "checkpoints" / "best-epoch=0.ckpt").unlink()
    res = run(_cfg(tiny_bert_dir, "resume=last"), run_dir=part)
    out = capsys.readouterr().out
    named = [line for line in out.splitlines() if "does not load" in line]
    assert len(named) == 1 and str(last) in named[0] and "moved to last.ckpt.corrupt-" in named[0], out
    assert len(list((part / "checkpoints").glob("last.ckpt.corrupt-*"))) == 1
    if damage == "empty":
        assert "(empty file)" in named[0] and res["resumed_from"].endswith("best-epoch=0.ckpt")
    else:
        assert "training this run from the start" in out and res["resumed_from"] is None
    assert res["history"] == full[1]["history"]
    assert len(_rows(part)) == len(_rows(full[0]))
