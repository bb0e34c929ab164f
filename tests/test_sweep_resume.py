"""sweep_dir mode: a rerun multirun trains nothing twice; an interrupted run resumes from last.ckpt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Crash, crash_at_epoch, kasa_train_cli, tiny_cls
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.recipe import run
from kasa.runs.hashing import config_hash

TINY = ("trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
        "benchmark.batch_size=8", "method.r=4")


def _cfg(tiny_bert_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*tiny_cls(tiny_bert_dir), *TINY, *overrides])


def test_multirun_twice_trains_once(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    # kasa-train -m in this process (the multirun CLI process itself: tests/test_multirun_failures.py)
    import lightning as L

    fits = []
    real_fit = L.Trainer.fit
    monkeypatch.setattr(L.Trainer, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k))
    argv = ["-m", "seed=0,1", *tiny_cls(tiny_bert_dir), *TINY, f"sweep_dir={tmp_path / 'sw'}",
            f"hydra.sweep.dir={tmp_path / 'hydra'}"]
    code = kasa_train_cli(monkeypatch, *argv)
    first = capsys.readouterr()
    assert code == 0, first.err[-3000:]
    dirs = sorted((tmp_path / "sw").iterdir())
    assert [d.name.rsplit("-", 1)[0] for d in dirs] == ["kasa-minilm-vader_movie5-s0",
                                                        "kasa-minilm-vader_movie5-s1"]
    stamps = {d: (d / "results.json").stat().st_mtime_ns for d in dirs}
    assert "skipped" not in first.out and len(fits) == 2
    code = kasa_train_cli(monkeypatch, *argv)
    second = capsys.readouterr()
    assert code == 0, second.err[-3000:]
    assert second.out.count("[kasa] skipped") == 2 and len(fits) == 2  # no Trainer.fit the second time
    assert {d: (d / "results.json").stat().st_mtime_ns for d in dirs} == stamps
    assert sorted((tmp_path / "sw").iterdir()) == dirs


def test_interrupted_run_resumes_then_skips(tiny_bert_dir, tmp_path):
    cfg = _cfg(tiny_bert_dir, f"sweep_dir={tmp_path}")
    run_dir = tmp_path / f"{cfg.run_name}-{config_hash(cfg)}"
    with pytest.raises(Crash):
        run(cfg, callbacks=[crash_at_epoch(1)])
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "results.json").exists()
    resumed = run(cfg)
    assert resumed["resumed_from"].endswith("last.ckpt") and len(resumed["history"]) == 2
    assert resumed["config_hash"] == config_hash(cfg) and "skipped" not in resumed
    again = run(cfg)
    assert again["skipped"] is True and again["history"] == resumed["history"]


def test_hash_ignores_bookkeeping_but_not_hyper_parameters(tiny_bert_dir, tmp_path):
    base = config_hash(_cfg(tiny_bert_dir))
    assert config_hash(_cfg(tiny_bert_dir, "resume=auto", f"sweep_dir={tmp_path}",
                            "trainer.enable_progress_bar=true")) == base
    assert config_hash(_cfg(tiny_bert_dir, "method.beta=0.5")) != base


def test_resume_auto_without_sweep_dir(tiny_bert_dir, tmp_path):
    res = run(_cfg(tiny_bert_dir, "resume=auto", "trainer.max_epochs=1"), run_dir=tmp_path)
    assert res["resumed_from"] is None
    assert run(_cfg(tiny_bert_dir, "resume=auto", "trainer.max_epochs=1"), run_dir=tmp_path)["skipped"] is True
    # another config in the same folder is not mistaken for done: it trains (and resumes nothing foreign)
    assert json.loads((tmp_path / "results.json").read_text())["config_hash"]
