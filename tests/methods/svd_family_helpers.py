"""Shared helpers of the PiSSA / MiLoRA / DoRA / CorDA tests: HF PEFT as the oracle on the tiny models."""

from __future__ import annotations

import copy

import torch
from conftest import TINY_MODELS, model_output, tiny_inputs

from kasa.methods import get_weight

# Explicit targets (not the presets) so PEFT and we wrap the same layers; llama's down_proj is wide (in > out).
TARGETS = {
    "bert": ["query", "value"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
}
R = 4
ALPHA = 8.0  # scaling 2: exercises PEFT's division of the singular values by the scaling


def fresh_pair(model_name: str, seed: int = 0):
    """Two identical copies of a tiny model."""
    torch.manual_seed(seed)
    m = TINY_MODELS[model_name]()
    return m, copy.deepcopy(m)


def peft_layers(peft_model, ours) -> list[tuple[str, object, object]]:
    """``(name, peft LoRA layer, our AdapterLayer)`` for every wrapped target."""
    from kasa.methods import AdapterLayer

    theirs = dict(peft_model.named_modules())
    out = []
    for n, m in ours.named_modules():
        if isinstance(m, AdapterLayer):
            out.append((n, theirs[f"base_model.model.{n}"], m))
    assert out, "no wrapped layers"
    return out


def peft_base_weight(layer) -> torch.Tensor:
    """PEFT's (residual) base weight as (out, in)."""
    return get_weight(layer.get_base_layer()).detach()


def peft_factors(layer) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()


def align_rows(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Flip the sign of each row of ``a`` to agree with ``ref`` (singular vectors are defined up to sign)."""
    sign = torch.sign((a * ref).sum(dim=1, keepdim=True))
    sign[sign == 0] = 1
    return a * sign


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def peft_trainable(peft_model) -> int:
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def outputs(model, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model_output(model.eval(), tiny_inputs(seed))


@torch.no_grad()
def perturb_adapters(model, seed: int = 1, scale: float = 0.05, heads: bool = True) -> None:
    """Give every trainable tensor (``heads=False``: adapter tensors only) a random nudge, as if trained."""
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if p.requires_grad and (heads or "lora_" in n):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@torch.no_grad()
def same_adapters(peft_model, ours) -> None:
    """Nudge our adapter tensors (B != 0, DoRA's m != ||W||) and copy them into PEFT's layers, as if both
    had been trained alike."""
    perturb_adapters(ours, heads=False)
    for _, theirs, mine in peft_layers(peft_model, ours):
        theirs.lora_A["default"].weight.copy_(mine.lora_A)
        theirs.lora_B["default"].weight.copy_(mine.lora_B)
        if hasattr(mine, "lora_magnitude"):
            theirs.lora_magnitude_vector["default"].weight.copy_(mine.lora_magnitude)


def check_merge_unmerge(method, model, ref: torch.Tensor, tol: float) -> None:
    """Merged and unmerged-again outputs both equal ``ref`` within ``tol``."""
    method.merge(model)
    assert max_diff(outputs(model), ref) < tol
    method.unmerge(model)
    assert max_diff(outputs(model), ref) < tol
