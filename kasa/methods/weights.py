"""The weights of the layers a method wraps: their ``(out, in)`` view, quantised storage, ZeRO-3 gathering.

Every method reads and writes target weights through :func:`get_weight` / :func:`set_weight`, so GPT-2's
``Conv1D`` (``in x out``) and quantised layers (bitsandbytes, torchao) look like an ``nn.Linear`` weight.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from .errors import MethodError

try:  # GPT-2 stores its projections as Conv1D (weight is in x out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment]


@contextmanager
def gathered(weights: torch.Tensor | list[torch.Tensor], modifier_rank: int | None = 0) -> Iterator[None]:
    """Inside the block, DeepSpeed ZeRO-3 partitioned parameters (those with a ``ds_id``) hold their full values.

    ``modifier_rank``: the rank whose in-place changes (KaSA's truncation, PiSSA's residual) are kept and
    re-partitioned on exit; every rank computes the same ones. A no-op for ordinary tensors, and without
    DeepSpeed installed (deepspeed is imported only when a partitioned parameter is seen). ``apply`` gathers
    all target weights at once (KaSA batches its SVDs across them): that is the whole targeted part of the
    model on every GPU for the duration of ``apply``.
    """
    ws = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    partitioned = [w for w in ws if hasattr(w, "ds_id")]
    if not partitioned:
        yield
        return
    try:
        import deepspeed
    except ImportError:  # a ds_id without deepspeed: nothing to gather with
        yield
        return
    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank):
        yield


# Quantised weights (bitsandbytes layers, torchao tensor subclasses; kasa.models.quantize makes them). Recognised by
# the defining package, so neither package is imported here.
def _weight_kind(w: Any) -> str | None:
    mod = type(w).__module__ or ""
    if mod.startswith("torchao") or mod.startswith("bitsandbytes"):
        return f"{mod.partition('.')[0]} {type(w).__name__}"
    return None


def quantized_kind(module: nn.Module) -> str | None:
    """What quantises ``module``'s weight (``"torchao NF4Tensor"``, ``"bitsandbytes Linear4bit"``, ...), or None."""
    if (type(module).__module__ or "").startswith("bitsandbytes"):
        return f"bitsandbytes {type(module).__name__}"
    w = getattr(module, "weight", None)
    return _weight_kind(w) if isinstance(w, torch.Tensor) else None


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module``'s weight is stored quantised."""
    return quantized_kind(module) is not None


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` weight of a quantised linear layer as a new dense tensor (its compute dtype)."""
    w = module.weight
    kind = quantized_kind(module) or ""
    if kind.startswith("torchao"):
        return w.get_original_weight() if hasattr(w, "get_original_weight") else w.dequantize()  # NF4 | int8
    if kind.startswith("bitsandbytes"):
        import bitsandbytes as bnb

        if getattr(w, "quant_state", None) is not None:  # Params4bit, packed on the GPU
            return bnb.functional.dequantize_4bit(w.data, w.quant_state)
        if getattr(w, "SCB", None) is not None:  # Int8Params, packed: int8 rows times their absmax / 127
            return w.CB.float() * (w.SCB.float()[:, None] / 127.0)
        return w.data.clone()  # not moved to the GPU yet: still the full-precision values
    return w


def is_linear_like(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if Conv1D and isinstance(module, Conv1D):
        return module.weight.shape[1], module.weight.shape[0]
    raise MethodError(f"cannot wrap layer type {type(module).__name__}: expected nn.Linear or Conv1D")


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as an ``(out, in)`` tensor (a transposed view for Conv1D; a dequantised copy for a quantised
    layer, see :func:`quantized_kind`)."""
    if quantized_kind(module) is not None:
        return dequantized_weight(module)
    w = module.weight
    return w.T if (Conv1D and isinstance(module, Conv1D)) else w


@torch.no_grad()
def set_weight(module: nn.Module, w_out_in: torch.Tensor) -> None:
    """Overwrite the weight from an ``(out, in)`` tensor, keeping the layer's dtype, device and layout."""
    kind = quantized_kind(module)
    if kind is not None:
        raise MethodError(f"cannot write into a quantised weight ({kind}): decompose and merge at full precision "
                          "(model.quantization quantises after an SVD-initialised method's residual is written)")
    target = module.weight
    src = w_out_in.T if (Conv1D and isinstance(module, Conv1D)) else w_out_in
    target.copy_(src.to(dtype=target.dtype, device=target.device))


__all__ = ["Conv1D", "dequantized_weight", "gathered", "get_weight", "is_linear_like", "is_quantized", "layer_shape",
           "quantized_kind", "set_weight"]
