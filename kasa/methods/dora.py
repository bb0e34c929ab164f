"""DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al., ICML 2024, arXiv 2402.09353).

The adapted weight is split into a magnitude and a direction:
``W' = m * (W + s B A) / ||W + s B A||_c`` where ``||.||_c`` is the norm over the input dimension (one value
per output unit; the paper's "column-wise" norm of a (in x out) matrix), ``m`` is a trainable vector
initialised to ``||W||_c`` and ``B A`` is a LoRA (A Kaiming-uniform, B zero), so ``W' = W`` at init.

As in the paper's section 4.3 and HF PEFT, the norm is treated as a constant (detached), and the forward
reuses the base output instead of materialising ``W'``::

    y = base(x) + (m / n - 1) * (W x') + (m / n) * s B A x'        n = ||W + s B A||_c (detached)

where ``x'`` is the dropped-out input (with no active dropout ``W x'`` is the base output minus its bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoraConfigBase
from .errors import MethodError
from .layer import add_cast
from .lora import LoraLayer
from .method import PeftMethod
from .registry import register
from .weights import get_weight, set_weight


class DoraLayer(LoraLayer):
    """A LoRA layer with a trainable magnitude vector ``lora_magnitude`` (out_features)."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, name: str = "", *, autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, r, alpha, dropout, use_rslora, name=name,
                         autocast_adapter_dtype=autocast_adapter_dtype)
        with torch.no_grad():  # in float32 whatever the base dtype, stored in the adapter dtype
            norm = self.weight_norm(get_weight(base_layer).float(), self.lora_weight().float())
        self.lora_magnitude = nn.Parameter(norm.to(self.adapter_dtype))
        # Norm of the unmerged weight, kept while merged: the merged weight alone cannot give it back.
        self._merged_norm: torch.Tensor | None = None

    def lora_weight(self) -> torch.Tensor:
        """``B @ A`` (out x in, unscaled)."""
        return self.lora_B @ self.lora_A

    def weight_norm(self, weight: torch.Tensor, lora_weight: torch.Tensor) -> torch.Tensor:
        """``||W + s B A||`` over the input dimension, one value per output unit."""
        return torch.linalg.norm(weight + self.scaling * lora_weight, dim=1).to(weight.dtype)

    def _dora_delta(self, x: torch.Tensor, base_out: torch.Tensor | None) -> torch.Tensor:
        """What DoRA adds to the base output; ``base_out`` is ``W x`` without bias when it can be reused.

        Computed in the adapter dtype (float32 on a half-precision base: the weight is cast up, as HF PEFT)."""
        x = x.to(self.lora_A.dtype)
        weight = get_weight(self.base_layer).to(x.dtype)
        lora_w = self.lora_weight()
        norm = self.weight_norm(weight, lora_w.detach()).detach()  # DoRA sec. 4.3: no gradient through the norm
        factor = self.lora_magnitude / norm
        dropout_active = self.training and not isinstance(self.lora_dropout, nn.Identity)
        x_in = self.lora_dropout(x) if dropout_active else x
        lora_out = F.linear(F.linear(x_in, self.lora_A), self.lora_B)
        if base_out is None or dropout_active:  # an active dropout changes the input of W too
            base_out = F.linear(x_in, weight)
        return (factor - 1) * base_out + factor * lora_out * self.scaling

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self._dora_delta(x, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or self.disabled:
            return y
        bias = self.bias
        base_out = y - bias if bias is not None else y
        return add_cast(y, self._dora_delta(x, base_out))

    def _factor_and_update(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m / ||W + s B A||, s B A)`` in float32 from the UNMERGED weight."""
        upd = self.scaling * self.lora_weight().float()
        norm = torch.linalg.norm(weight.float() + upd, dim=1)
        return self.lora_magnitude.float() / norm, upd

    def delta_weight(self) -> torch.Tensor:
        """``W' - W`` (out x in, float32), the exact change that merging makes."""
        w = get_weight(self.base_layer).float()
        if self.merged:
            factor = self.lora_magnitude.float() / self._merged_norm
            return w - (w / factor[:, None] - self.scaling * self.lora_weight().float())
        factor, upd = self._factor_and_update(w)
        return factor[:, None] * (w + upd) - w

    @torch.no_grad()
    def merge(self, safe: bool = False) -> None:
        if self.merged:
            return
        # the unmerged norm, needed by unmerge; kept only once the shared merge has succeeded
        norm = self.lora_magnitude.float() / self._factor_and_update(get_weight(self.base_layer))[0]
        super().merge(safe)  # W + delta_weight() = m / ||W + s B A|| * (W + s B A)
        self._merged_norm = norm

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        factor = self.lora_magnitude.float() / self._merged_norm
        w = get_weight(self.base_layer).float()
        set_weight(self.base_layer, w / factor[:, None] - self.scaling * self.lora_weight().float())
        self._merged_norm = None
        self.merged = False


@dataclass
class DoraConfig(LoraConfigBase):
    dropout: float = 0.05  # the DoRA paper's commonsense setting (r=32, alpha=64, dropout 0.05)


@register("dora")
class Dora(PeftMethod):
    """DoRA: LoRA direction update plus a trainable per-output magnitude."""

    config_cls = DoraConfig
    paper_order = 14
    export_formats = ("peft", "merged")
    peft_type = "LORA"
    loraplus_b_params = ("lora_B",)  # lora_magnitude is 1-D: PEFT's LoRA+ puts it in B too

    def validate(self) -> None:
        if self.config.r < 1:
            raise MethodError(f"dora r={self.config.r} must be at least 1")

    def wrap(self, name: str, module: nn.Module) -> DoraLayer:
        c = self.config
        return DoraLayer(module, c.r, c.alpha, c.dropout, c.use_rslora, name=name,
                         autocast_adapter_dtype=c.autocast_adapter_dtype)
