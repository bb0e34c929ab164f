"""Run options beside the optimiser (docs/protocols.md, "Optimiser options"): early stopping on the monitored
metric (``benchmark.early_stopping``) and the TensorBoard logger (``logger=tensorboard``), on tiny in-process runs."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_cls

from kasa.config import compose
from kasa.config.validate import validate
from kasa.errors import ConfigError
from kasa.recipe import run


def _cfg(tiny_bert_dir, *overrides: str):
    return compose([*tiny_cls(tiny_bert_dir), "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
                    "benchmark.batch_size=8", "method=lora", "method.r=2", *overrides])


def test_early_stopping_stops_on_the_monitored_metric_and_records_the_epoch(tiny_bert_dir, tmp_path):
    # min_delta 1.0: no accuracy can rise by more than that, so the epoch after the first ends the run
    cfg = _cfg(tiny_bert_dir, "trainer.max_epochs=5", "benchmark.early_stopping.patience=1",
               "benchmark.early_stopping.min_delta=1.0")
    res = run(cfg, run_dir=tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["early_stopping"] == {"patience": 1, "min_delta": 1.0, "stopped_epoch": 1,
                                         "reason": "patience_exhausted"}
    assert [r["epoch"] for r in on_disk["history"]] == [0, 1] and res["early_stopping"]["stopped_epoch"] == 1


def test_early_stopping_that_never_triggers_records_no_stop(tiny_bert_dir, tmp_path):
    res = run(_cfg(tiny_bert_dir, "trainer.max_epochs=2", "benchmark.early_stopping.patience=5"), run_dir=tmp_path)
    assert res["early_stopping"] == {"patience": 5, "min_delta": 0.0, "stopped_epoch": None, "reason": None}
    assert len(res["history"]) == 2


def test_tensorboard_logger_writes_an_events_file_in_the_run_dir(tiny_bert_dir, tmp_path):
    res = run(_cfg(tiny_bert_dir, "trainer.max_epochs=1", "logger=tensorboard"), run_dir=tmp_path)
    events = list((tmp_path / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"val/" in events[0].read_bytes()  # the scalar tags are stored as text
    assert (tmp_path / "logs" / "metrics.csv").exists()  # the CSV log is kept beside it
    assert "early_stopping" not in res  # off by default: nothing recorded


def test_tensorboard_logger_without_a_writer_package_is_one_config_error(monkeypatch, tiny_bert_dir):
    import kasa.training.loggers as loggers

    validate(_cfg(tiny_bert_dir, "logger=tensorboard"))
    monkeypatch.setattr(loggers, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match=r"logger=tensorboard needs tensorboardX .*kasa\[tensorboard\]"):
        validate(_cfg(tiny_bert_dir, "logger=tensorboard"))
    validate(_cfg(tiny_bert_dir))  # the CSV logger needs nothing


def test_loraplus_reaches_the_training_loop(tiny_bert_dir, tmp_path):
    import lightning as L

    seen: list = []

    class Groups(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.extend((g["initial_lr"], {n.rsplit(".", 1)[-1] for n, p in pl_module.model.named_parameters()
                                           if any(p is q for q in g["params"])})
                        for g in trainer.optimizers[0].param_groups)

    run(_cfg(tiny_bert_dir, "trainer.max_epochs=1", "benchmark.optim.lr=1e-3", "benchmark.optim.head_lr=null",
             "benchmark.optim.loraplus_lr_ratio=16"), run_dir=tmp_path, callbacks=[Groups()])
    # groupA, groupB, groupB_no_decay (the head's bias: 1-D, PEFT's rule)
    assert seen == [(1e-3, {"lora_A", "weight"}), (1.6e-2, {"lora_B"}), (1.6e-2, {"bias"})]
