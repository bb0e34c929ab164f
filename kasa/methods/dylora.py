"""DyLoRA (Valipour et al., EACL 2023, arXiv 2210.07558): LoRA trained for every rank up to ``r`` at once.

Each training step draws one ``b ~ Uniform{1, ..., r}`` for the whole model (paper section 3, ``p_B``
uniform) and every adapted layer uses only the first ``b`` rows of ``A`` and the first ``b`` columns of ``B``:
``y = W x + (alpha / b) B[:, :b] A[:b] dropout(x)`` (rsLoRA: ``alpha / sqrt(b)``). Outside training (and
for merging) the rank is ``eval_rank`` (default ``r``) with scaling ``alpha / eval_rank``.

The draw is reproducible and resumable: step ``t`` uses a ``torch.Generator`` seeded with
``seed * 1_000_003 + t``, so the same (seed, step) always gives the same ``b`` whatever happened before.

``frozen_lower`` (default ``True``, as the reference code trains: its nested-dropout module's
``set_rank(b, frozen=True)`` detaches the lower ranks): only row ``b`` of ``A`` and column ``b`` of ``B``
receive gradients, the lower ranks enter the forward as constants. ``False`` updates all of the first ``b``
rows/columns (the paper's other variant). Which one a run used is in its config.
Init as LoRA: ``A`` Kaiming-uniform (a = sqrt 5), ``B`` zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoraConfigBase
from .errors import MethodError
from .lora import LoraLayer
from .method import PeftMethod, step_randint
from .registry import register


class DyLoraLayer(LoraLayer):
    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, eval_rank: int | None = None, frozen_lower: bool = True,
                 name: str = "", *, autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, r, alpha, dropout, use_rslora, name=name,
                         autocast_adapter_dtype=autocast_adapter_dtype)
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.eval_rank = eval_rank if eval_rank is not None else r
        self.frozen_lower = frozen_lower
        self.sampled_rank: int | None = None  # set by Dylora.on_before_forward for training forwards

    def scaling_for(self, b: int) -> float:
        return self.alpha / math.sqrt(b) if self.use_rslora else self.alpha / b

    @property
    def active_rank(self) -> int:
        """The rank of the next forward: the sampled one while training, ``eval_rank`` otherwise."""
        if self.training and self.sampled_rank is not None:
            return self.sampled_rank
        return self.eval_rank

    def factors(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        A, B = self.lora_A[:b], self.lora_B[:, :b]
        if self.frozen_lower and self.training and b > 1:
            A = torch.cat([A[: b - 1].detach(), A[b - 1:]], dim=0)
            B = torch.cat([B[:, : b - 1].detach(), B[:, b - 1:]], dim=1)
        return A, B

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_rank
        A, B = self.factors(b)
        x = self.lora_dropout(x).to(A.dtype)
        return F.linear(F.linear(x, A), B) * self.scaling_for(b)

    def delta_weight(self) -> torch.Tensor:
        b = self.eval_rank  # merging is for inference
        return (self.lora_B[:, :b].float() @ self.lora_A[:b].float()) * self.scaling_for(b)


@dataclass
class DyLoraConfig(LoraConfigBase):
    eval_rank: int | None = None  # rank used outside training and for merging; None: r
    seed: int = 0  # seeds the per-step rank draws
    frozen_lower: bool = True  # the reference code's "frozen" training: only the b-th row/column is updated


@register("dylora")
class Dylora(PeftMethod):
    config_cls = DyLoraConfig
    paper_order = 9
    export_formats = ("lora", "merged")
    peft_type = None

    def validate(self) -> None:
        c = self.config
        if c.r < 1:
            raise MethodError(f"dylora r={c.r} must be at least 1")
        if c.eval_rank is not None and not 1 <= c.eval_rank <= c.r:
            raise MethodError(f"dylora eval_rank={c.eval_rank} must lie in [1, r={c.r}]")

    def wrap(self, name: str, module: nn.Module) -> DyLoraLayer:
        c = self.config
        return DyLoraLayer(module, c.r, c.alpha, c.dropout, c.use_rslora, c.eval_rank, c.frozen_lower, name=name,
                           autocast_adapter_dtype=c.autocast_adapter_dtype)

    def sample_rank(self, step: int) -> int:
        """The rank ``b`` of training step ``step`` (a pure function of ``(seed, step)``)."""
        return step_randint(self.config.seed, step, 1, self.config.r)

    def on_before_forward(self, model: nn.Module, step: int) -> None:
        self.set_rank(model, self.sample_rank(step))

    def set_rank(self, model: nn.Module, b: int | None) -> None:
        """Force the training rank of every layer (``None``: back to ``eval_rank``)."""
        if b is not None and not 1 <= b <= self.config.r:
            raise MethodError(f"dylora rank {b} outside [1, r={self.config.r}]")
        for layer in self.adapter_layers(model):
            if isinstance(layer, DyLoraLayer):
                layer.sampled_rank = b

    def set_eval_rank(self, model: nn.Module, b: int) -> None:
        """Serve the adapter at another rank (the point of DyLoRA: any ``b <= r`` without retraining)."""
        if not 1 <= b <= self.config.r:
            raise MethodError(f"dylora eval_rank {b} outside [1, r={self.config.r}]")
        for layer in self.adapter_layers(model):
            if isinstance(layer, DyLoraLayer):
                if layer.merged:
                    raise MethodError("unmerge the model before changing the DyLoRA eval rank")
                layer.eval_rank = b
