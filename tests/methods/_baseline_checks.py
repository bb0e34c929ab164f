"""Checks every wrapped-layer method shares (forward, merge, save/load) on the tiny models."""

from __future__ import annotations

import torch
from conftest import TINY_MODELS, model_output, tiny_inputs

from kasa.methods import AdapterLayer, build_method


def fresh(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return TINY_MODELS[name]()


@torch.no_grad()
def perturb_adapters(model, seed: int = 1, scale: float = 0.1) -> None:
    """Random values in every adapter parameter, so deltas are non-zero."""
    g = torch.Generator().manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, AdapterLayer):
            for pname, p in layer.named_parameters():
                if not pname.startswith("base_layer."):
                    p.add_(torch.randn(p.shape, generator=g).to(p) * scale)


def check_forward_merge_roundtrip(method_name: str, model_name: str, mergeable: bool = True, **kwargs) -> None:
    model = fresh(model_name)
    method = build_method(method_name, **kwargs)
    method.apply(model)
    perturb_adapters(model)
    x = tiny_inputs()
    with torch.no_grad():
        out = model_output(model, x)
    assert torch.isfinite(out).all()
    if mergeable:
        method.merge(model)
        with torch.no_grad():
            merged = model_output(model, x)
        torch.testing.assert_close(merged, out, rtol=0, atol=1e-5)
        method.unmerge(model)
        with torch.no_grad():
            torch.testing.assert_close(model_output(model, x), out, rtol=0, atol=1e-5)
    sd = method.adapter_state_dict(model)
    other = fresh(model_name)
    method2 = build_method(method_name, **kwargs)
    method2.apply(other)
    method2.load_adapter_state_dict(other, sd)
    with torch.no_grad():
        torch.testing.assert_close(model_output(other, x), out, rtol=0, atol=1e-6)
