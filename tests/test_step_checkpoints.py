"""Step-level control (issue 21, item 2): validation every N batches, last.ckpt every N optimiser steps, and a resume
in the middle of an epoch that continues at the next batch and ends as the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import Crash, tiny_cls
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.errors import ConfigError
from kasa.recipe import run
from kasa.runs.hashing import config_hash
from kasa.training.samplers import EpochSampler

# dropout on: the resumed steps must draw the same masks (StepSeed) on the same batches (TrainLoader)
TINY = ("trainer.max_epochs=2", "trainer.enable_progress_bar=false", "benchmark.batch_size=8", "method.r=4",
        "method.dropout=0.1")


def _cfg(tiny_bert_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*tiny_cls(tiny_bert_dir), *TINY, *overrides])


class Batches(L.Callback):
    """Records the input ids of every training batch by (epoch, batch index), and can crash before one."""

    def __init__(self, crash_at: tuple[int, int] | None = None):
        self.seen: dict[tuple[int, int], torch.Tensor] = {}
        self.crash_at = crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.crash_at:
            raise Crash("simulated interruption")
        self.seen[(trainer.current_epoch, batch_idx)] = batch["input_ids"].clone()


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _interrupted_equals_full(tiny_bert_dir: Path, tmp_path: Path, overrides: tuple[str, ...],
                             crash_at: tuple[int, int], resume_step: int) -> tuple[dict, dict]:
    full_batches = Batches()
    full = run(_cfg(tiny_bert_dir, *overrides), run_dir=tmp_path / "full", callbacks=[full_batches])
    with pytest.raises(Crash):
        run(_cfg(tiny_bert_dir, *overrides), run_dir=tmp_path / "part", callbacks=[Batches(crash_at)])
    ckpt = _state(tmp_path / "part")
    assert ckpt["global_step"] == resume_step  # a checkpoint inside the crashed epoch, not at its start
    resumed_batches = Batches()
    resumed = run(_cfg(tiny_bert_dir, *overrides, "resume=last"), run_dir=tmp_path / "part",
                  callbacks=[resumed_batches])
    # the resumed segment trained on exactly the batches the uninterrupted run took at those positions
    assert min(resumed_batches.seen) == (resume_step // 4, resume_step % 4)  # the next batch: 4 an epoch
    for pos, ids in resumed_batches.seen.items():
        assert torch.equal(ids, full_batches.seen[pos]), pos
    assert resumed["history"] == full["history"]
    assert resumed["metrics"] == full["metrics"]
    a, b = _state(tmp_path / "full")["state_dict"], _state(tmp_path / "part")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return full, resumed


def test_checkpoint_every_n_steps_resumes_mid_epoch_exactly(tiny_bert_dir, tmp_path):
    # 4 batches an epoch, last.ckpt every 2 steps: steps 2 (mid epoch 0), 4 (epoch end: after its validation), 6
    # (mid epoch 1); killed before the 4th batch of epoch 1, the run resumes from step 6 at batch index 2
    overrides = ("trainer.limit_train_batches=4", "checkpoint.every_n_train_steps=2")
    full, resumed = _interrupted_equals_full(tiny_bert_dir, tmp_path, overrides, crash_at=(1, 3), resume_step=6)
    assert [(r["epoch"], r["step"]) for r in full["history"]] == [(0, 4), (1, 8)]
    assert resumed["resumes"][-1]["step"] == 6


def test_validation_every_n_batches_rows_and_mid_epoch_resume(tiny_bert_dir, tmp_path):
    # validation every 2 batches: 2 history rows an epoch (same epoch, own step); last.ckpt after each validation,
    # so a kill before batch index 3 of epoch 1 resumes after the validation at step 6
    overrides = ("trainer.limit_train_batches=4", "trainer.val_check_interval=2")
    full, resumed = _interrupted_equals_full(tiny_bert_dir, tmp_path, overrides, crash_at=(1, 3), resume_step=6)
    assert [(r["epoch"], r["step"]) for r in full["history"]] == [(0, 2), (0, 4), (1, 6), (1, 8)]
    m = full["metrics"]
    best = max(full["history"], key=lambda r: r[m["monitor"]])
    assert (m["best_epoch"], m["best_step"]) == (best["epoch"], best["step"])
    best_ckpt = next((tmp_path / "full" / "checkpoints").glob("best-*.ckpt"))
    assert torch.load(best_ckpt, weights_only=True)["global_step"] == best["step"]
    # each validation's predictions under its own name; the best's and the last's are kept
    kept = {p.name for p in (tmp_path / "full" / "predictions").glob("*.jsonl")}
    assert kept == {f"epoch{best['epoch']}-step{best['step']}.jsonl", "epoch1-step8.jsonl"}


def test_new_keys_at_their_defaults_keep_the_config_hash(tiny_bert_dir):
    base = _cfg(tiny_bert_dir)
    assert base.checkpoint.every_n_train_steps is None and base.trainer.val_check_interval is None
    key = config_hash(base)
    # how often last.ckpt is written changes nothing a run computes: not hashed
    assert config_hash(_cfg(tiny_bert_dir, "checkpoint.every_n_train_steps=50")) == key
    assert config_hash(_cfg(tiny_bert_dir, "trainer.val_check_interval=50")) != key


@pytest.mark.parametrize("override, message", [
    ("checkpoint.every_n_train_steps=0", "checkpoint.every_n_train_steps=0 is not allowed"),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5 is not allowed"),
])
def test_bad_step_settings_are_one_line(tiny_bert_dir, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run(_cfg(tiny_bert_dir, override), run_dir=tmp_path)


def test_epoch_sampler_resume_at_continues_the_same_order():
    s = EpochSampler(20, seed=3)
    s.set_epoch(2)
    whole = list(s)
    s.resume_at(2, 7)
    assert list(s) == whole[7:]
    assert list(s) == whole  # once: the next iteration of the epoch starts at 0 again
    s.resume_at(1, 7)
    s.set_epoch(2)  # a checkpoint at an epoch's end: the next epoch is not shortened
    assert list(s) == whole
    ranks = [EpochSampler(20, seed=3, num_replicas=2, rank=r) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    full = [list(r) for r in ranks]
    for r, order in zip(ranks, full):
        r.resume_at(1, 4)
        assert list(r) == order[4:]
