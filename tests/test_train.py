"""End to end through Hydra: results.json, seed determinism, resume == uninterrupted, multirun, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import Crash, crash_at_epoch, kasa_train_cli, tiny_cls
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.errors import ConfigError
from kasa.recipe import run


def _cfg(tiny_bert_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[
            *tiny_cls(tiny_bert_dir), "trainer.max_epochs=2", "trainer.limit_train_batches=4",
            "trainer.enable_progress_bar=false", "benchmark.batch_size=8", "method.r=4", *overrides])


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_run_writes_results_json(tiny_bert_dir, tmp_path):
    res = run(_cfg(tiny_bert_dir), run_dir=tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["method"] == "kasa" and on_disk["seed"] == 0
    m = on_disk["metrics"]
    assert set(m) >= {"final", "best", "best_epoch", "monitor", "selection", "reported"}
    assert 0.0 <= m["final"]["accuracy"] <= 1.0 and m["best"]["accuracy"] >= m["final"]["accuracy"]
    assert len(on_disk["history"]) == 2
    assert on_disk["params"]["adapter"] == 2 * 2 * (4 * 32 + 32 * 4 + 4)  # 2 layers x (query, value)
    assert on_disk["params"]["total"] > on_disk["params"]["trainable"] > on_disk["params"]["adapter"]
    assert on_disk["config"]["method"]["r"] == 4
    assert {"torch", "transformers", "lightning", "kasa"} <= set(on_disk["versions"])
    assert on_disk["wall_time_s"] > 0
    assert (tmp_path / "logs" / "metrics.csv").exists()
    assert res["metrics"] == m


def test_same_seed_same_metrics_other_seed_differs(tiny_bert_dir, tmp_path):
    a = run(_cfg(tiny_bert_dir, "trainer.max_epochs=1"), run_dir=tmp_path / "a")
    b = run(_cfg(tiny_bert_dir, "trainer.max_epochs=1"), run_dir=tmp_path / "b")
    run(_cfg(tiny_bert_dir, "trainer.max_epochs=1", "seed=1"), run_dir=tmp_path / "c")  # read back as sc below
    assert a["history"] == b["history"]
    sa, sb, sc = _adapter(tmp_path / "a"), _adapter(tmp_path / "b"), _adapter(tmp_path / "c")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_resume_equals_uninterrupted(tiny_bert_dir, tmp_path):
    # dropout on, so resuming must also restore the random streams
    common = ("method.dropout=0.1",)
    full = run(_cfg(tiny_bert_dir, *common), run_dir=tmp_path / "full")
    with pytest.raises(Crash):
        run(_cfg(tiny_bert_dir, *common), run_dir=tmp_path / "part", callbacks=[crash_at_epoch(1)])
    assert not (tmp_path / "part" / "results.json").exists()
    resumed = run(_cfg(tiny_bert_dir, *common, "resume=last"), run_dir=tmp_path / "part")
    assert resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["history"] == full["history"]
    s_full, s_res = _adapter(tmp_path / "full"), _adapter(tmp_path / "part")
    assert s_full.keys() == s_res.keys()
    for k in s_full:  # float32 round-off of the restored optimiser state only
        torch.testing.assert_close(s_res[k], s_full[k], atol=1e-6, rtol=1e-5)


def test_only_adapter_and_head_in_checkpoint(tiny_bert_dir, tmp_path):
    run(_cfg(tiny_bert_dir, "trainer.max_epochs=1"), run_dir=tmp_path)
    keys = _adapter(tmp_path).keys()
    assert keys and all(("lora_" in k or "kasa_removed" in k or ".classifier." in k) for k in keys)


@pytest.mark.parametrize("override, message", [
    ("method.r=40", "r=40 is impossible"),
    ("method.target_modules=[nothing_here]", "match no module"),
    ("method.truncation=sideways", "truncation='sideways'"),
    ("model.name_or_path=/no/such/dir-or-hub-id", "the path does not exist"),
    ("resume=/no/such/run", "does not exist"),
])
def test_bad_input_fails_before_training_with_a_named_error(tiny_bert_dir, tmp_path, override, message):
    with pytest.raises(Exception, match=message):
        run(_cfg(tiny_bert_dir, override), run_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_cli_multirun_and_clean_error(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    # kasa-train's entry point in this process; the CLI process itself (exit 2, one stderr line, no Hydra folder):
    # tests/test_multirun_failures.py
    # fft has no r: no method.r override, so every method keeps its own default
    code = kasa_train_cli(monkeypatch, "-m", "method=kasa,lora,fft", *tiny_cls(tiny_bert_dir),
                          "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=${method.name}")
    assert code == 0, capsys.readouterr().err[-3000:]
    for name in ("kasa", "lora", "fft"):
        res = json.loads((tmp_path / "sweep" / name / "results.json").read_text())
        assert res["method"] == name
    capsys.readouterr()
    code = kasa_train_cli(monkeypatch, *tiny_cls(tiny_bert_dir), "method.r=40", f"hydra.run.dir={tmp_path / 'bad'}")
    err = capsys.readouterr().err
    assert code == 2
    assert "kasa-train: error:" in err and "r=40" in err
    assert "Traceback" not in err


def test_unknown_method_name_is_named():
    from omegaconf import OmegaConf

    from kasa.config.validate import validate

    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        validate(OmegaConf.create({"method": {"name": "nope"}, "dataset": {"source": "bigbench"},
                                   "benchmark": {"family": "classification"}}))


def test_wandb_logger_offline_without_key_never_blocks(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from kasa.assets import cache_dir

    monkeypatch.setenv("KASA_CACHE", str(cache_dir()))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    for name in ("run", "next"):  # two runs in one process (a multirun) get a W&B run each
        res = run(_cfg(tiny_bert_dir, "logger=wandb", "trainer.max_epochs=1"), run_dir=tmp_path / name)
        assert os.environ["WANDB_MODE"] in ("offline", "dryrun")  # Lightning spells offline "dryrun"
        assert list((tmp_path / name / "wandb").glob("offline-run-*"))
        assert res["metrics"]["final"]
    import wandb

    assert wandb.run is None  # finished, not left open for the next job
