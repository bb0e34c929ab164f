"""Sequence classification / regression data: sources by name (packaged ones in :mod:`.packaged`, GLUE in
:mod:`.glue`, BIG-bench from the user's copy below).

A source turns a dataset config into :class:`Splits` (train and validation examples, label names);
:class:`ClassificationDataModule` tokenises them once and serves seeded, resumable batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from kasa.errors import DatasetError  # noqa: F401  (re-exported)
from kasa.training.samplers import EpochSampler, ShardSampler, TrainLoader


@dataclass
class Example:
    text: str
    label: int | float
    text_pair: str | None = None


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    label_names: list[str] = field(default_factory=list)  # empty: regression
    test: list[Example] = field(default_factory=list)
    # More than one dev set (GLUE MNLI: matched + mismatched). Each set's metrics carry "_<name>";
    # with no extra sets and no name, metrics keep their bare names (the single-dev-set path).
    validation_name: str = ""
    extra_validation: dict[str, list[Example]] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 1

    @property
    def validation_sets(self) -> dict[str, list[Example]]:
        """Every dev set by name, the monitored one (``validation``) first."""
        return {self.validation_name: self.validation, **self.extra_validation}


SOURCES: dict[str, Callable[..., Splits]] = {}


def source(name: str):
    def deco(fn: Callable[..., Splits]) -> Callable[..., Splits]:
        SOURCES[name] = fn
        return fn

    return deco


def load_splits(source_name: str, **kwargs) -> Splits:
    if source_name not in SOURCES:
        raise DatasetError(f"unknown dataset source '{source_name}'; known: {sorted(SOURCES)}")
    splits = SOURCES[source_name](**kwargs)
    if not splits.train or not splits.validation:
        raise DatasetError(f"dataset source '{source_name}' gave an empty train or validation split")
    check_labels(splits, source_name)
    return splits


def check_labels(splits: Splits, source_name: str = "") -> None:
    """Class labels are integers in ``[0, num_labels)`` (else the first training step fails with an IndexError
    in the loss); regression targets are numbers."""
    n = splits.num_labels
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test,
             **{f"validation_{k}": v for k, v in splits.extra_validation.items()}}
    for part, examples in parts.items():
        for i, ex in enumerate(examples):
            label = ex.label
            if not splits.label_names:
                ok = isinstance(label, (int, float)) and not isinstance(label, bool)
                allowed = "a number (regression)"
            else:
                ok = isinstance(label, int) and not isinstance(label, bool) and 0 <= label < n
                allowed = f"a class index in [0, {n - 1}] ({', '.join(map(str, splits.label_names))})"
            if not ok:
                raise DatasetError(f"dataset source '{source_name}': {part} example {i} has label {label!r}; "
                                   f"labels must be {allowed}")


def stratified_split(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic per-label split: every label keeps ``val_fraction`` of its examples for validation."""
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction={val_fraction} must be in (0, 1)")
    rng = random.Random(seed)
    by_label: dict = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    train, val = [], []
    for label in sorted(by_label, key=str):
        group = by_label[label][:]
        rng.shuffle(group)
        n_val = max(1, round(len(group) * val_fraction)) if len(group) > 1 else 0
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


@source("bigbench")
def bigbench_classification(task: str, val_fraction: float = 0.2, split_seed: int = 0,
                            max_examples: int | None = None, strip_prefix: str | None = None,
                            path: str | None = None) -> Splits:
    """A BIG-bench multiple-choice task as classification: the label is the choice scored 1.

    Labels are the ``target_scores`` keys in order of first appearance. BIG-bench ships one split, so
    train/validation come from a fixed stratified split (``split_seed`` is independent of the run seed,
    so every seed of a sweep sees the same validation set). ``path``: BIG-bench's task folder or archive
    (:mod:`kasa.data.bigbench`; no package ships it any more).
    """
    from kasa.data.bigbench import bigbench_task

    data = bigbench_task(task, path)
    label_names: list[str] = []
    examples = []
    for ex in data["examples"]:
        scores = ex.get("target_scores")
        if not scores:
            raise DatasetError(f"BIG-bench task '{task}' is not multiple-choice (no target_scores)")
        for k in scores:
            if k not in label_names:
                label_names.append(k)
        best = [k for k, v in scores.items() if v == max(scores.values())]
        if len(best) != 1:
            continue  # ambiguous gold label: not a single-label classification example
        text = ex["input"]
        if strip_prefix and text.startswith(strip_prefix):
            text = text[len(strip_prefix):]
        examples.append(Example(text=text.strip(), label=label_names.index(best[0])))
    if max_examples:
        examples = random.Random(split_seed).sample(examples, min(max_examples, len(examples)))
    train, val = stratified_split(examples, val_fraction, split_seed)
    return Splits(train=train, validation=val, label_names=label_names)


class TokenizedDataset(Dataset):
    def __init__(self, examples: list[Example], tokenizer, max_length: int, regression: bool):
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples]
        has_pair = any(p is not None for p in pairs)
        enc = tokenizer(texts, pairs if has_pair else None, truncation=True, max_length=max_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(examples))]
        dtype = torch.float32 if regression else torch.long
        self.labels = torch.tensor([e.label for e in examples], dtype=dtype)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {**self.features[i], "labels": self.labels[i]}


class ClassificationDataModule(L.LightningDataModule):
    """Tokenises a :class:`Splits` once and serves padded batches.

    ``batch_size`` is per process: a data-parallel run on W devices trains with global batch W x batch_size,
    in the same order as one process with batch W x batch_size (:class:`EpochSampler`).
    """

    def __init__(self, splits: Splits, tokenizer, max_length: int = 128, batch_size: int = 16,
                 eval_batch_size: int = 64, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.splits, self.tokenizer = splits, tokenizer
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.seed, self.num_workers = seed, num_workers
        self.regression = not splits.label_names
        self._train = self._val = None
        self._extra_val: list[TokenizedDataset] = []

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            self._train = TokenizedDataset(self.splits.train, self.tokenizer, self.max_length, self.regression)
            self._val = TokenizedDataset(self.splits.validation, self.tokenizer, self.max_length, self.regression)
            self._extra_val = [TokenizedDataset(ex, self.tokenizer, self.max_length, self.regression)
                               for ex in self.splits.extra_validation.values()]

    def _collate(self, batch: list[dict]) -> dict:
        labels = torch.stack([b.pop("labels") for b in batch])
        out = self.tokenizer.pad(batch, return_tensors="pt")
        out["labels"] = labels
        return dict(out)

    def train_dataloader(self) -> DataLoader:
        return TrainLoader(self._train, batch_size=self.batch_size, sampler=EpochSampler(len(self._train), self.seed),
                           collate_fn=self._collate, num_workers=self.num_workers, trainer=self.trainer)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader per dev set; a plain loader (not a list of one) when there is a single dev set."""
        # ShardSampler: under DDP each rank scores its own share of every dev set, no example twice.
        loaders = [DataLoader(ds, batch_size=self.eval_batch_size, sampler=ShardSampler(len(ds)),
                              collate_fn=self._collate, num_workers=self.num_workers)
                   for ds in (self._val, *self._extra_val)]
        return loaders if len(loaders) > 1 else loaders[0]
