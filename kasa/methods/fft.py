"""Full fine-tuning behind the method interface: every parameter trains, nothing is wrapped.

The parameters keep the model's dtype (``autocast_adapter_dtype`` has nothing to cast); on a float16/bfloat16
model a warning recommends float32 weights with ``trainer.precision=bf16-mixed``."""

from __future__ import annotations

from torch import nn

from .config import MethodConfig
from .layer import warn_half_base_parameters
from .method import PeftMethod
from .registry import register


@register("fft")
class FullFineTuning(PeftMethod):
    config_cls = MethodConfig
    paper_order = 1
    export_formats = ("merged",)
    peft_type = None
    wraps_targets = False
    trains_base_weights = True

    def mark_trainable(self, model: nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        warn_half_base_parameters("fft", model)

    def merge(self, model: nn.Module, safe: bool = False, dequantize: bool = False) -> nn.Module:
        return model  # nothing to fold: the weights are the model

    def unmerge(self, model: nn.Module) -> nn.Module:
        return model
