"""Benchmark families: how a config's ``benchmark.family`` becomes a model, a datamodule and a LightningModule.

One module per family, each holding its data splits (or the call into :mod:`kasa.data`), its evaluator and its
``build(cfg, method) -> TaskBundle``; this registry is the only place that lists them. :func:`kasa.train.run`
then applies the method (CorDA calibrates on the bundle's training batches first), trains and writes
``results.json`` from ``module.history``. A new family is one module here, one line below and one yaml in
``conf/benchmark/`` (CONTRIBUTING.md).
"""

from __future__ import annotations

from . import classification, commonsense, e2e, instruction
from .base import Builder, TaskBundle, as_dict

BENCHMARKS: dict[str, Builder] = {
    "classification": classification.build,
    "e2e": e2e.build,
    "commonsense": commonsense.build,
    "instruction": instruction.build,
}

__all__ = ["BENCHMARKS", "Builder", "TaskBundle", "as_dict"]
