"""Classification runs save their dev-set predictions (best and last epoch) with each example's dev-set index,
gathered over data-parallel ranks; kasa-report pairs them for McNemar's test."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kasa.methods import build_method
from kasa.tasks.classification.module import ClassificationModule
from kasa.training.samplers import ShardSampler

N_DEV = 9
LABELS = [i % 3 for i in range(N_DEV)]
# per epoch: which dev examples the model gets right (accuracy 3/9, 9/9, 1/9, 6/9: best = epoch 1, last = 3)
RIGHT = [set(range(3)), set(range(9)), {4}, set(range(6))]


class _Scripted(torch.nn.Module):
    """Predicts the label on the examples ``RIGHT[epoch]`` names and label + 1 elsewhere; one weight to train."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.epoch = 0

    def forward(self, input_ids, labels, idx, **_):
        right = torch.tensor([int(i) in RIGHT[self.epoch] for i in idx])
        pred = torch.where(right, labels, (labels + 1) % 3)
        logits = torch.nn.functional.one_hot(pred, 3).float() + 0 * self.w
        return SimpleNamespace(logits=logits, loss=(self.w - 1) ** 2)


class _Epoch(L.Callback):
    def on_validation_epoch_start(self, trainer, module):
        module.model.epoch = trainer.current_epoch


class _Data(L.LightningDataModule):
    """Rows carry their own index (only the scripted model reads it); the dev loader shards with ShardSampler."""

    def _rows(self):
        return [{"input_ids": torch.tensor([1]), "labels": torch.tensor(y), "idx": torch.tensor(i)}
                for i, y in enumerate(LABELS)]

    def train_dataloader(self):
        return DataLoader(self._rows()[:2], batch_size=2)

    def val_dataloader(self):
        return DataLoader(self._rows(), batch_size=2, sampler=ShardSampler(N_DEV))


def _module(**kw) -> ClassificationModule:
    return ClassificationModule(_Scripted(), build_method("lora"), 3, ["accuracy"], monitor="accuracy", **kw)


def _read(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def _fit(root: Path, module: ClassificationModule, **trainer_kw) -> None:
    trainer = L.Trainer(max_epochs=len(RIGHT), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[_Epoch()],
                        default_root_dir=str(root), accelerator="cpu", **trainer_kw)
    trainer.fit(module, datamodule=_Data())


def test_best_and_last_epoch_predictions_are_kept_with_their_dev_indices(tmp_path):
    module = _module()
    _fit(tmp_path, module)
    assert [round(h["accuracy"] * N_DEV) for h in module.history] == [len(r) for r in RIGHT]
    files = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert files == ["epoch1.jsonl", "epoch3.jsonl"]  # best (all right) and last; epochs 0 and 2 pruned
    for epoch in (1, 3):
        rows = _read(tmp_path / "predictions" / f"epoch{epoch}.jsonl")
        assert [r["idx"] for r in rows] == list(range(N_DEV)) and {r["set"] for r in rows} == {""}
        assert [r["label"] for r in rows] == LABELS
        assert {r["idx"] for r in rows if r["pred"] == r["label"]} == RIGHT[epoch]


def test_predictions_can_be_switched_off(tmp_path):
    _fit(tmp_path, _module(save_predictions=False))
    assert not (tmp_path / "predictions").exists()


@pytest.mark.slow  # two gloo processes (~15 s on 2 cores); the default suite's 2-process run is tests/test_ddp.py
def test_ddp_ranks_gather_every_dev_example_once(tmp_path):
    """2 CPU processes (gloo): rank r scores dev examples r, r + 2, ...; the file holds all 9, each once."""
    module = _module()
    _fit(tmp_path, module, strategy="ddp_spawn", devices=2)
    rows = _read(tmp_path / "predictions" / "epoch3.jsonl")
    assert [r["idx"] for r in rows] == list(range(N_DEV))
    assert {r["idx"] for r in rows if r["pred"] == r["label"]} == RIGHT[3]
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["epoch1.jsonl", "epoch3.jsonl"]


def test_several_validations_an_epoch_pair_the_reported_steps_file(tmp_path):
    """With trainer.val_check_interval every validation has its own epoch<E>-step<S> file and the paired test reads
    the reported step's; a run from before that naming (one per-epoch file, holding the epoch's last validation)
    gives None (no McNemar) instead of pairing the wrong predictions."""
    from kasa.analysis.report.collect import Record, load_correctness

    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "epoch0.jsonl").write_text(
        "".join(json.dumps({"set": "", "idx": i, "pred": i % 2, "label": 0}) + "\n" for i in range(4)))
    (tmp_path / "predictions" / "epoch0-step2.jsonl").write_text(
        "".join(json.dumps({"set": "", "idx": i, "pred": 0, "label": 0}) + "\n" for i in range(4)))
    (tmp_path / "results.json").write_text("{}")

    def rec(history, step=None):
        return Record("t", "kasa", "", "task", 0, 0.5, "accuracy", "best", str(tmp_path / "results.json"), epoch=0,
                      step=step, history=history)

    assert load_correctness(rec([{"epoch": 0, "step": 4}])) == {0: (True, 0), 1: (False, 0), 2: (True, 0),
                                                                3: (False, 0)}
    several = [{"epoch": 0, "step": 2}, {"epoch": 0, "step": 4}]
    assert load_correctness(rec(several, step=2)) == {i: (True, 0) for i in range(4)}
    assert load_correctness(rec(several, step=4)) is None  # no epoch0-step4 file: nothing to pair
    assert load_correctness(rec(several)) is None  # a run from before the per-step names
