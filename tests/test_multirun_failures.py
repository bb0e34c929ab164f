"""A multirun point that fails is recorded (failed.json) and the sweep goes on; a summary and exit 2 at the end;
rerunning the sweep retries the failed point and skips the finished one. A real ``kasa-train -m`` subprocess on
the tiny BERT (the CLI process itself: exit code, stderr, console), the rerun through the same entry point in this
process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import kasa_train_cli, tiny_cls

REPO = Path(__file__).resolve().parents[1]


def _argv(tiny_bert_dir: Path, tmp_path: Path, sweep: str) -> list[str]:
    return ["-m", "method.r=0,4", *tiny_cls(tiny_bert_dir), "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false", f"sweep_dir={tmp_path / 'points'}",
            f"hydra.sweep.dir={tmp_path / sweep}"]


def _multirun(tiny_bert_dir: Path, tmp_path: Path, sweep: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "kasa.train", *_argv(tiny_bert_dir, tmp_path, sweep)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_a_failing_point_does_not_end_the_sweep_and_is_retried(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    first = _multirun(tiny_bert_dir, tmp_path, "sweep1")
    assert first.returncode == 2, first.stderr[-3000:]  # as a single run's named error
    # the r=0 point: one line, a record in its Hydra folder and in its sweep_dir folder
    assert "kasa-train: error: kasa r=0 must be at least 1" in first.stderr
    records = sorted((tmp_path / "sweep1").glob("*/failed.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["type"] == "MethodError" and "r=0" in rec["error"] and "method.r=0" in rec["overrides"]
    point = tmp_path / "points"
    failed_points = [p.parent for p in point.glob("*/failed.json")]
    assert len(failed_points) == 1 and failed_points[0].name.endswith(rec["config_hash"])
    assert not (failed_points[0] / "results.json").exists()
    # the r=4 point trained
    done = [json.loads(p.read_text()) for p in point.glob("*/results.json")]
    assert [d["config"]["method"]["r"] for d in done] == [4]
    # the summary names the failed point by what differs between the points
    summary = first.stderr[first.stderr.index("point(s) of this multirun failed"):]
    assert "method.r=0: MethodError: kasa r=0 must be at least 1" in summary and "method.r=4" not in summary
    # console: each Lightning info line once, no advertisement, no raw colour codes
    out = first.stdout + first.stderr
    assert out.count("GPU available") == 1 and "Tip:" not in out and "\x1b[" not in out

    code = kasa_train_cli(monkeypatch, *_argv(tiny_bert_dir, tmp_path, "sweep2"))
    again = capsys.readouterr()
    assert code == 2, again.err[-3000:]
    assert "skipped" in again.out and "already holds this config's results" in again.out  # r=4
    assert "kasa-train: error: kasa r=0 must be at least 1" in again.err  # r=0 was tried again
    assert len(list((tmp_path / "sweep2").glob("*/failed.json"))) == 1


def test_single_run_keeps_exit_2_and_one_line(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    # in this process; the console script's own process (Hydra's logging and warnings included) is
    # tests/test_checks.py::test_cli_subprocess_one_line
    code = kasa_train_cli(monkeypatch, "method.r=0", *tiny_cls(tiny_bert_dir), f"hydra.run.dir={tmp_path / 'run'}")
    stderr = capsys.readouterr().err
    err = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and err == ["kasa-train: error: kasa r=0 must be at least 1"], stderr
    assert not (tmp_path / "run").exists()  # Hydra's folder of the failed run is gone
