"""PEFT methods behind one interface (see :mod:`kasa.methods.base`).

Registry names: ``fft bitfit adapter_h adapter_p adapter_l adapter_d lora adalora dylora vera sara
pissa milora dora corda kasa``.
"""

from .base import (REGISTRY, AdapterLayer, MethodConfig, MethodError, PeftMethod, build_method,
                   count_parameters, register)
from . import fft, lora, kasa, bitfit, adapters, pissa, milora, dora, adalora, dylora, vera, sara, corda  # noqa: F401  (registration)



def method_from_config(node) -> PeftMethod:
    """The method a run config's ``method`` node names (``name`` plus its hyper-parameters: a mapping or DictConfig)."""
    from omegaconf import DictConfig, OmegaConf

    kw = dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
    return build_method(kw.pop("name"), **kw)


__all__ = ["REGISTRY", "AdapterLayer", "MethodConfig", "MethodError", "PeftMethod", "build_method",
           "count_parameters", "method_from_config", "register"]
