"""The error every method raises for a bad configuration (one line naming what to change)."""

from __future__ import annotations


class MethodError(ValueError):
    """Bad method configuration: unknown name, impossible shape, target matching nothing, ..."""


__all__ = ["MethodError"]
