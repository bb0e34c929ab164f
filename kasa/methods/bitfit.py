"""BitFit (Ben Zaken et al., ACL 2022): only the bias terms of the model (and the task head) train.

"Bias terms" are every parameter named ``bias`` outside the task head: the linear/Conv1D biases and the
LayerNorm biases (the paper's b^{m,l}_{(.)} and the LayerNorm offsets; for BERT-base that is ~0.1M
parameters, the size the paper and the LoRA/KaSA tables report). ``target_modules`` optionally restricts
them to the biases of matching modules (the paper's sub-variant that trains only the query and the
second-MLP biases is ``target_modules=["query", "intermediate.dense"]``-style). Nothing is wrapped.

On a float16/bfloat16 base the biases train in that dtype (they are the base's own parameters, so
``autocast_adapter_dtype`` does not apply) and a warning says so; see
:func:`~kasa.methods.layer.warn_half_base_parameters`.

Merge is a no-op by design: the trained biases ARE the model's parameters, so there is nothing to fold
and a BitFit model needs no merge for latency-free inference (like FFT).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import MethodConfig
from .errors import MethodError
from .layer import warn_half_base_parameters
from .method import PeftMethod
from .registry import register
from .targets import match_target


@dataclass
class BitFitConfig(MethodConfig):
    """``target_modules``: None trains every bias; a list/regex trains the biases of matching modules."""


@register("bitfit")
class BitFit(PeftMethod):
    config_cls = BitFitConfig
    paper_order = 2
    export_formats = ("merged",)
    peft_type = None
    wraps_targets = False

    def bias_names(self, model: nn.Module) -> list[str]:
        """Names of the body's bias parameters that BitFit trains (task-head parameters excluded)."""
        heads = self.heads(model)
        spec = self.config.target_modules
        names = []
        for n, p in model.named_parameters():
            module_name, _, leaf = n.rpartition(".")
            if leaf != "bias" or _under(module_name, heads):
                continue
            if spec is not None and not match_target(module_name, spec):
                continue
            names.append(n)
        return names

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze everything, then unfreeze the bias terms and the task head; raises when there are none."""
        names = self.bias_names(model)
        if not names:
            what = type(model).__name__
            if self.config.target_modules is not None:
                raise MethodError(f"bitfit target_modules={self.config.target_modules!r} "
                                  f"select no bias terms of {what}")
            raise MethodError(f"bitfit needs bias terms; {what} has none")
        for p in model.parameters():
            p.requires_grad_(False)
        self.mark_trainable(model, names)
        warn_half_base_parameters("bitfit", model)
        return model

    def mark_trainable(self, model: nn.Module, names: list[str] | None = None) -> None:
        super().mark_trainable(model)  # the task head
        params = dict(model.named_parameters())
        for n in names if names is not None else self.bias_names(model):
            params[n].requires_grad_(True)

    def merge(self, model: nn.Module, safe: bool = False, dequantize: bool = False) -> nn.Module:
        return model  # the trained biases are the model's own parameters: nothing to fold

    def unmerge(self, model: nn.Module) -> nn.Module:
        return model


def _under(module_name: str, heads: list[str]) -> bool:
    """Whether ``module_name`` is a head module or inside one."""
    parts = module_name.split(".")
    return any(match_target(".".join(parts[:i]), heads) for i in range(1, len(parts) + 1))
