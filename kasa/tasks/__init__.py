"""Benchmark families, one folder each: ``kasa/tasks/<family>/`` holds its data loading, prompts, metrics and the
:class:`~kasa.tasks.base.Task` that checks its config section and builds its datamodule and module.

The registry discovers the families from this package: a subpackage that exports ``TASK`` is a family, named by
``TASK.name`` (the value of ``benchmark.family``). Adding a family is one folder plus one ``conf/benchmark`` yaml
(CONTRIBUTING.md); :mod:`kasa.tasks.lm_eval` (lm-evaluation-harness) sits beside them, usable by every causal-LM
family.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from kasa.errors import ConfigError
from kasa.tasks.base import Task, TaskBundle, as_dict


@functools.cache
def tasks() -> dict[str, Task]:
    """``{family name: Task}`` of every subpackage of :mod:`kasa.tasks` that exports ``TASK``."""
    found: dict[str, Task] = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        task = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TASK", None)
        if isinstance(task, Task):
            if task.name in found:
                raise RuntimeError(f"two benchmark families named '{task.name}'")
            found[task.name] = task
    return found


def get_task(name: str | None) -> Task:
    """The family ``benchmark.family`` names; an unknown name is one line listing the known ones."""
    known = tasks()
    if name not in known:
        raise ConfigError(f"unknown benchmark family '{name}'; known: {sorted(known)}")
    return known[name]


__all__ = ["Task", "TaskBundle", "as_dict", "get_task", "tasks"]
