"""Benchmark families: how a config becomes a model, a datamodule and a LightningModule.

``benchmark.family`` picks the builder. A builder loads data and the backbone (with the head its task
needs) and returns a :class:`TaskBundle`; :func:`kasa.train.run` then applies the method (CorDA calibrates
on the bundle's training batches first), trains and writes ``results.json`` from ``module.history``.
New families register with :func:`family`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .methods.base import PeftMethod


@dataclass
class TaskBundle:
    model: nn.Module
    datamodule: L.LightningDataModule
    module: L.LightningModule  # exposes `history`: one dict of validation metrics per epoch
    split_sizes: dict[str, int] = field(default_factory=dict)

    def calibration_batches(self) -> Iterator[dict[str, Any]]:
        """Training batches as model inputs (labels dropped), for methods that calibrate (CorDA)."""
        self.datamodule.setup("fit")
        for batch in self.datamodule.train_dataloader():
            yield {k: v for k, v in batch.items() if k != "labels"}


FAMILIES: dict[str, Callable[[DictConfig, PeftMethod], TaskBundle]] = {}


def family(name: str):
    def deco(fn: Callable[[DictConfig, PeftMethod], TaskBundle]):
        FAMILIES[name] = fn
        return fn

    return deco


def as_dict(node: Any) -> dict[str, Any]:
    return dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}


@family("classification")
def classification(cfg: DictConfig, method: PeftMethod) -> TaskBundle:
    """Sequence classification / regression (GLUE-style): encoder + head, torchmetrics on the dev set."""
    from .data.classification import ClassificationDataModule, DatasetError, load_splits
    from .models import load_model, load_tokenizer
    from .module import OptimConfig, PeftModule, metric_key

    d, b, m = cfg.dataset, cfg.benchmark, cfg.model
    splits = load_splits(d.source, **as_dict(d.get("source_args")))
    # Several dev sets (MNLI m/mm): metrics are suffixed with each set's name; one: bare names.
    sets = splits.validation_sets
    val_names = list(sets) if len(sets) > 1 or splits.validation_name else None
    keys = [metric_key(k, v) for v in (val_names or [""]) for k in d.metrics]
    if d.monitor not in keys:  # else ModelCheckpoint fails only after the first training epoch
        raise DatasetError(f"dataset.monitor='{d.monitor}' is not a metric this dataset logs; "
                           f"choose one of {keys}")
    tokenizer = load_tokenizer(m.name_or_path, revision=m.get("revision"))
    model = load_model(m.name_or_path, task="seq_cls", num_labels=splits.num_labels, dtype=m.get("dtype"),
                       revision=m.get("revision"), gradient_checkpointing=m.get("gradient_checkpointing", False))
    dm = ClassificationDataModule(splits, tokenizer, max_length=d.max_length, batch_size=b.batch_size,
                                  eval_batch_size=b.eval_batch_size, seed=cfg.seed)
    module = PeftModule(model, method, splits.num_labels, list(d.metrics), OptimConfig(**as_dict(b.optim)),
                        val_names=val_names)
    sizes = {"train": len(splits.train), "validation": len(splits.validation)}
    sizes.update({metric_key("validation", v): len(ex) for v, ex in sets.items() if v})
    return TaskBundle(model, dm, module, sizes)


# The generation families (e2e, commonsense, instruction) register themselves on import.
from . import gen_families  # noqa: E402,F401
