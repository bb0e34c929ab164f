"""PEFT methods behind one interface (see :mod:`kasa.methods.base`).

Registry names: ``fft bitfit adapter_h adapter_p adapter_l adapter_d lora adalora dylora vera sara
pissa milora dora corda kasa``.
"""

from .base import (REGISTRY, AdapterLayer, MethodConfig, MethodError, PeftMethod, build_method,
                   count_parameters, register)
from . import fft, lora, kasa, bitfit, adapters, pissa, milora, dora, adalora, dylora, vera, sara, corda  # noqa: F401  (registration)

__all__ = ["REGISTRY", "AdapterLayer", "MethodConfig", "MethodError", "PeftMethod", "build_method",
           "count_parameters", "register"]
