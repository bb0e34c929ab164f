"""LoRA (Hu et al., 2021): ``y = W x + (alpha / r) B A dropout(x)``, A Kaiming-uniform, B zero.

:class:`LoraLayer` is also the base of the SVD-family methods (KaSA, PiSSA, MiLoRA, ...): they change
the initialisation (:meth:`LoraLayer.reset_parameters`) and possibly insert a middle factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoraConfigBase
from .layer import AdapterLayer
from .method import PeftMethod, check_rank, lora_scaling
from .registry import register


class LoraLayer(AdapterLayer):
    """``lora_A``: (r, in), ``lora_B``: (out, r) as in HF PEFT, so weights copy across one to one."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, name: str = "", *, autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, autocast_adapter_dtype=autocast_adapter_dtype)
        check_rank(name or type(base_layer).__name__, r, self.out_features, self.in_features)
        self.r = r
        self.scaling = lora_scaling(alpha, r, use_rslora)
        kw = dict(dtype=self.adapter_dtype, device=base_layer.weight.device)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **kw))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same init as HF PEFT / the LoRA paper: A as nn.Linear's default (Kaiming-uniform, a=sqrt 5), B = 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lora_dropout(x).to(self.lora_A.dtype)
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling


@dataclass
class LoraConfig(LoraConfigBase):
    pass


@register("lora")
class Lora(PeftMethod):
    config_cls = LoraConfig
    paper_order = 7
    export_formats = ("peft", "lora", "merged")
    peft_type = "LORA"
    loraplus_b_params = ("lora_B",)

    def wrap(self, name: str, module: nn.Module) -> LoraLayer:
        c = self.config
        return LoraLayer(module, c.r, c.alpha, c.dropout, c.use_rslora, name=name,
                         autocast_adapter_dtype=c.autocast_adapter_dtype)
