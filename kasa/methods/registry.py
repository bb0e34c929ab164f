"""The method registry: names to :class:`~kasa.methods.method.PeftMethod` classes, filled by discovery.

A method is one module of this package whose class carries ``@register("name")``; :func:`discover` imports
every module of the package that is not infrastructure, so adding a method is adding that one file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from .errors import MethodError

if TYPE_CHECKING:
    from .method import PeftMethod

REGISTRY: dict[str, type["PeftMethod"]] = {}

# Modules of this package that define no method. Skipping them only keeps discovery from importing what it
# does not need (export pulls in the PEFT format code); a helper missing here is imported and registers nothing.
INFRASTRUCTURE = frozenset({"config", "errors", "export", "layer", "method", "registry", "svd", "targets",
                            "truncation_cache", "weights"})


def register(name: str):
    """Class decorator adding a :class:`PeftMethod` subclass to the registry under ``name``."""

    def deco(cls: type[PeftMethod]) -> type[PeftMethod]:
        if name in REGISTRY:
            raise MethodError(f"method name '{name}' registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def discover(package: str = __package__) -> list[str]:
    """Import every method module of ``package`` (each registers its methods); returns the modules imported."""
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name in INFRASTRUCTURE or info.ispkg:
            continue
        importlib.import_module(f"{package}.{info.name}")
        found.append(info.name)
    return found


def build_method(name: str, **kwargs: Any) -> "PeftMethod":
    """Instantiate a registered method; unknown names and unknown hyper-parameters raise :class:`MethodError`."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise MethodError(f"unknown method '{name}'; known methods: {' '.join(sorted(REGISTRY))}")
    cfg_cls = cls.config_cls
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise MethodError(f"method '{name}' has no hyper-parameter(s) {unknown}; it takes {sorted(known)}")
    return cls(cfg_cls(**kwargs))


def methods_in_paper_order() -> list[str]:
    """Registered method names in the paper's table order (``paper_order``), then any undeclared ones by name."""
    return sorted(REGISTRY, key=lambda n: (REGISTRY[n].paper_order is None, REGISTRY[n].paper_order or 0, n))


__all__ = ["INFRASTRUCTURE", "REGISTRY", "build_method", "discover", "methods_in_paper_order", "register"]
