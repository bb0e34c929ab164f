"""PEFT methods behind one interface (see :mod:`kasa.methods.method`).

Registry names: ``fft bitfit adapter_h adapter_p adapter_l adapter_d lora adalora dylora vera sara
pissa milora dora corda kasa``. Each is one module of this package with ``@register("name")`` on its class;
:func:`~kasa.methods.registry.discover` imports them, so adding a method is adding its file.

The infrastructure, by concern: :mod:`.registry` (names, discovery, building), :mod:`.config` (the typed
hyper-parameters), :mod:`.method` (:class:`PeftMethod`), :mod:`.layer` (:class:`AdapterLayer`, adapter dtypes),
:mod:`.targets` (which modules are wrapped), :mod:`.weights` (reading and writing their weights),
:mod:`.errors`. Code outside this package imports from ``kasa.methods`` itself.
"""

from .config import LoraConfigBase, MethodConfig
from .errors import MethodError
from .layer import HALF_DTYPES, AdapterLayer, adapter_dtype, add_cast, dense_linear, dequantize_bases
from .method import PeftMethod, count_parameters
from .registry import REGISTRY, build_method, discover, methods_in_paper_order, register
from .targets import HEAD_PRESETS, TARGET_PRESETS, match_target, preset_heads, preset_targets
from .weights import dequantized_weight, gathered, get_weight, is_quantized, quantized_kind, set_weight

discover()


def method_from_config(node) -> PeftMethod:
    """The method a run config's ``method`` node names (``name`` plus its hyper-parameters: a mapping or DictConfig)."""
    from omegaconf import DictConfig, OmegaConf

    kw = dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
    return build_method(kw.pop("name"), **kw)


__all__ = ["HALF_DTYPES", "HEAD_PRESETS", "REGISTRY", "TARGET_PRESETS", "AdapterLayer", "LoraConfigBase",
           "MethodConfig", "MethodError", "PeftMethod", "adapter_dtype", "add_cast", "build_method",
           "count_parameters", "dense_linear", "dequantize_bases", "dequantized_weight", "gathered", "get_weight",
           "is_quantized", "match_target", "method_from_config", "methods_in_paper_order", "preset_heads",
           "preset_targets", "quantized_kind", "register", "set_weight"]
