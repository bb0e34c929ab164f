"""Method names as ``kasa-train method=<name>`` composes them: a registry name (its dataclass defaults) or a
``conf/method/`` preset (a yaml extending a method with the settings of a published table row). Shared by
``python -m kasa.params`` (counts) and :mod:`kasa.perf.memory_plan` (memory)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

from kasa.methods import REGISTRY


def na_footnote(notes: list[str], note_ids: dict[tuple[str, str], int], method: str, exc: Exception) -> int:
    """The footnote number of a table cell that could not be computed: one note per (method, first line of the
    error), appended to ``notes`` the first time (the count and memory tables both print them under the table)."""
    reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    key = (method, reason)
    if key not in note_ids:
        notes.append(f"{method}: n/a ({reason})")
        note_ids[key] = len(notes)
    return note_ids[key]


def presets() -> list[str]:
    """The presets of ``conf/method/``: yaml files that are not a registry name (each extends a method)."""
    from kasa.config import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml") if p.stem not in REGISTRY)


@functools.cache
def _composed(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from kasa.config import CONF_DIR

    if name in REGISTRY and not (CONF_DIR / "method" / f"{name}.yaml").exists():
        # the node `method=<name>` composes is the method's stored schema: its values without Hydra (seconds of
        # imports and a composition per name saved; tests/test_memory_plan.py checks they are the same)
        from kasa.config.schemas import schema

        return OmegaConf.to_container(OmegaConf.structured(schema(name)), resolve=True)
    from hydra import compose, initialize_config_dir

    from kasa.config import register

    register()  # the methods' structured configs

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="kasa.cli.params"):
        return OmegaConf.to_container(compose("train", overrides=[f"method={name}"]).method, resolve=True)


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """``(registry name, settings)`` that ``kasa-train method=<name>`` composes: a registry name gives its
    dataclass defaults, a ``conf/method/`` preset the method it extends with the preset's values."""
    if name not in REGISTRY and name not in presets():
        raise ValueError(f"unknown method or preset '{name}'; registry: {' '.join(sorted(REGISTRY))}; "
                         f"presets: {' '.join(presets())}")
    cfg = copy.deepcopy(_composed(name))  # cached: one composition per name
    return cfg.pop("name"), cfg


def method_kwargs(name: str, sets: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``sets`` that method ``name`` accepts."""
    fields = {f.name for f in dataclasses.fields(REGISTRY[name].config_cls)}
    return {k: v for k, v in sets.items() if k in fields}


__all__ = ["presets", "resolve", "method_kwargs"]
