"""The wrapped-layer half of a method: :class:`AdapterLayer` (``y = base(x) + delta(x)``, merge, unmerge),
the dtype its parameters take on a half-precision base, and the dequantised merge of a quantised base."""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
from torch import nn

from .errors import MethodError
from .weights import dequantized_weight, get_weight, is_quantized, layer_shape, quantized_kind, set_weight

# Adapter parameters on these bases are float32 unless told otherwise (HF PEFT's ``autocast_adapter_dtype=True``).
HALF_DTYPES = (torch.float16, torch.bfloat16)


def adapter_dtype(base_dtype: torch.dtype, autocast: bool = True) -> torch.dtype:
    """The dtype of adapter parameters on a base of ``base_dtype``: float32 for a half-precision base
    (AdamW's small updates of a bfloat16 ``dsigma`` round to nothing) when ``autocast`` (the method config's
    ``autocast_adapter_dtype``), else the base's dtype."""
    return torch.float32 if (autocast and base_dtype in HALF_DTYPES) else base_dtype


class AdapterLayer(nn.Module):
    """A wrapped linear layer: ``y = base_layer(x) + delta(x)``, with merge/unmerge of ``delta_weight()``.

    Subclasses create their parameters in ``__init__``, in :attr:`adapter_dtype` (float32 on a half-precision
    base unless ``autocast_adapter_dtype=False``, see :func:`adapter_dtype`: a method passes its config's value,
    which every subclass constructor takes as a keyword and hands on), and implement :meth:`delta` (casting its
    input to the adapter dtype) and, when mergeable, :meth:`delta_weight` (out x in, float32). The delta is added to
    the base output in the wider of the two dtypes and the sum cast once to the base output's dtype; merging adds
    ``delta_weight`` to
    the weight in float32 and casts once (as HF PEFT).
    """

    mergeable: ClassVar[bool] = True

    def __init__(self, base_layer: nn.Module, shape: tuple[int, int] | None = None, *,
                 autocast_adapter_dtype: bool = True):
        super().__init__()
        self.base_layer = base_layer
        # shape: (out, in) for a base that is not itself a linear layer (an adapter around a whole block)
        self.out_features, self.in_features = shape or layer_shape(base_layer)
        self.merged = False
        self.disabled = False
        w = getattr(base_layer, "weight", None)
        like = w if isinstance(w, torch.Tensor) else next(base_layer.parameters(), None)
        base_dtype = like.dtype if like is not None else torch.get_default_dtype()
        if not base_dtype.is_floating_point:  # packed quantised storage: the dtype its kernels compute in
            base_dtype = getattr(base_layer, "compute_dtype", None) or torch.float32
        self.adapter_dtype = adapter_dtype(base_dtype, autocast_adapter_dtype)

    @property
    def weight(self) -> torch.Tensor:  # lets code that reads `.weight` of a target keep working
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        raise MethodError(f"{type(self).__name__} cannot be merged into the base weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or self.disabled:
            return y
        return add_cast(y, self.delta(x))

    @torch.no_grad()
    def merge(self, safe: bool = False) -> None:
        if self.merged:
            return
        if not self.mergeable:
            raise MethodError(f"{type(self).__name__} is not mergeable")
        check_mergeable_base(self)
        w = get_weight(self.base_layer)
        new = w.float() + self.delta_weight().float()
        if safe and not torch.isfinite(new).all():
            raise MethodError("safe merge refused: the merged weight has non-finite values")
        set_weight(self.base_layer, new)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = get_weight(self.base_layer)
        set_weight(self.base_layer, w.float() - self.delta_weight().float())
        self.merged = False


def check_mergeable_base(layer: "AdapterLayer", name: str = "") -> None:
    """A merge writes into the base weight: refused on a quantised one (one line naming the layer)."""
    kind = quantized_kind(layer.base_layer)
    if kind is not None:
        name = name or getattr(layer, "name", "") or type(layer).__name__
        raise MethodError(f"cannot merge '{name}' into its quantised base weight ({kind}): merge(model, "
                          "dequantize=True) replaces each quantised base by its dequantised dense weight first")


@torch.no_grad()
def dense_linear(module: nn.Module) -> nn.Linear:
    """A frozen plain ``nn.Linear`` holding a quantised layer's dequantised weight and its bias (same mode)."""
    w = dequantized_weight(module)
    dense = nn.Linear(w.shape[1], w.shape[0], bias=getattr(module, "bias", None) is not None, device=w.device,
                      dtype=w.dtype)
    dense.weight.copy_(w)
    if dense.bias is not None:
        dense.bias.copy_(module.bias.detach().to(w.dtype))
    dense.requires_grad_(False)
    return dense.train(module.training)


def dequantize_bases(model: nn.Module) -> list[str]:
    """Replace the quantised ``base_layer`` of every adapter by :func:`dense_linear` of it; returns the layers
    replaced (the merge of a QLoRA-style run into a dense model)."""
    done = []
    for lname, layer in model.named_modules():
        if isinstance(layer, AdapterLayer) and is_quantized(layer.base_layer):
            layer.base_layer = dense_linear(layer.base_layer)
            done.append(lname)
    return done


def warn_half_base_parameters(method_name: str, model: nn.Module) -> None:
    """Warn when a method that trains the base's own parameters (FFT, BitFit) trains float16/bfloat16 ones.

    They stay in the base's dtype (they ARE the model; casting them would change its layers' dtypes), so
    updates below half precision's resolution round away; load the model in float32 and train with
    ``trainer.precision=bf16-mixed`` (float32 master weights) instead.
    """
    half = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype in HALF_DTYPES})
    if half:
        warnings.warn(f"{method_name} trains the base model's own {'/'.join(half)} parameters in that dtype: "
                      "small optimiser updates round away; load the model in float32 (model.dtype=null) and "
                      "use trainer.precision=bf16-mixed for float32 master weights", stacklevel=3)


def add_cast(y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``y + delta`` computed in the wider dtype (a float32 adapter output on a bfloat16 base output), cast once
    to ``y``'s dtype, as HF PEFT's LoRA forward."""
    return (y + delta).to(y.dtype)


__all__ = ["HALF_DTYPES", "AdapterLayer", "adapter_dtype", "add_cast", "check_mergeable_base", "dense_linear",
           "dequantize_bases", "warn_half_base_parameters"]
