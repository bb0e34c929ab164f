"""The error every method raises for a bad configuration (one line naming what to change).

It is :class:`kasa.errors.MethodError` (a :class:`~kasa.errors.KasaError` and a ``ValueError``), re-exported so
method modules and ``kasa.methods`` users need not know where kasa's error hierarchy lives.
"""

from __future__ import annotations

from ..errors import MethodError

__all__ = ["MethodError"]
