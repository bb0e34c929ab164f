"""Hydra structured configs: each method's dataclass is its ``conf/method`` schema, and the ``benchmark`` sections
``optim``, ``lm_eval``, ``judge`` and ``early_stopping`` are their dataclasses' (:func:`sections`), so every
default is held once.

:func:`register_configs` stores one typed node per registry method in Hydra's ConfigStore (group ``method``), so a
method's defaults live in its dataclass alone and ``method.r=abc`` or ``method.bta=1`` fails when the config is
composed, before anything loads. ``conf/method/<name>.yaml`` exists only where a config differs from its
dataclass (a preset); such a file starts with ``defaults: [<name>_schema, _self_]`` or with another method option.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, List, Optional

from kasa.methods import REGISTRY, PeftMethod

SCHEMA_SUFFIX = "_schema"


def _omegaconf_type(hint: Any) -> Any:
    """The annotation OmegaConf can check for a dataclass field's type hint.

    OmegaConf 2.3 knows ``Optional[X]`` and ``List[X]`` but not PEP 604 unions of containers: ``list[str] | None``
    becomes ``Optional[List[str]]``; a union of a container and a scalar (``target_modules: list[str] | str |
    None``, PEFT's form) stays untyped here and is checked by the method when it is built.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            return Any
        inner = _omegaconf_type(args[0])
        return Optional[inner] if optional else inner
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return List[_omegaconf_type(item)]
    if origin in (tuple, dict):
        return Any
    return hint


def schema(name: str, cls: type[PeftMethod] | None = None) -> type:
    """A dataclass with a ``name`` field and every field of method ``name``'s config, typed for OmegaConf."""
    cls = cls or REGISTRY[name]
    hints = typing.get_type_hints(cls.config_cls)
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=name))]
    for f in dataclasses.fields(cls.config_cls):
        default = (dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING
                   else dataclasses.field(default_factory=f.default_factory))
        fields.append((f.name, _omegaconf_type(hints[f.name]), default))
    return dataclasses.make_dataclass(cls.config_cls.__name__, fields)


def section_schema(cls: type) -> type:
    """A config section's dataclass as a structured config that holds its keys and defaults, with untyped fields:
    the values are checked by the class itself (``problem()``, one place), and a value keeps the type it is
    written with, so a run's config hash is what it was before the section had a schema."""
    fields = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = (dataclasses.field(default_factory=lambda v=f.default: list(v)) if isinstance(f.default, tuple)
                       else dataclasses.field(default=f.default))
        else:
            default = dataclasses.field(default_factory=f.default_factory)
        fields.append((f.name, Any, default))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def sections() -> dict[str, type]:
    """``benchmark`` sub-sections with a schema: a benchmark yaml pulls one in with ``- /schema/<name>@<name>`` in
    its defaults and states only the values that differ."""
    from kasa.tasks.instruction.judge import JudgeSettings
    from kasa.tasks.lm_eval import LmEvalSettings
    from kasa.training.early_stopping import EarlyStoppingConfig
    from kasa.training.optim import OptimConfig

    return {"optim": OptimConfig, "lm_eval": LmEvalSettings, "judge": JudgeSettings,
            "early_stopping": EarlyStoppingConfig}


def register_configs(conf_dir: str | Path) -> None:
    """Store every method's schema in Hydra's ConfigStore: ``<name>_schema`` always (what a yaml preset extends),
    and ``<name>`` itself unless ``conf_dir/method/<name>.yaml`` exists (a file and a stored node of one name
    would make Hydra pick one silently)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, cls in sections().items():
        cs.store(group="schema", name=name, node=section_schema(cls))
    for name, cls in REGISTRY.items():
        node = schema(name, cls)
        cs.store(group="method", name=name + SCHEMA_SUFFIX, node=node)
        if not (Path(conf_dir) / "method" / f"{name}.yaml").exists():
            cs.store(group="method", name=name, node=node)
