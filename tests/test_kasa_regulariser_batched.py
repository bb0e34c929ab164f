"""KaSA's batched regulariser equals the per-layer sum it replaced (values and gradients)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODELS

from kasa.methods import build_method
from kasa.methods.kasa import KasaLayer


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
@pytest.mark.parametrize("form", ["paper", "reference"])
@pytest.mark.parametrize("beta,gamma", [(1e-4, 1e-3), (0.5, 0.0), (0.0, 2.0)])
def test_batched_regulariser_equals_per_layer_sum(arch, form, beta, gamma):
    torch.manual_seed(0)
    model = TINY_MODELS[arch]()
    method = build_method("kasa", r=4, regularizer=form, beta=beta, gamma=gamma)
    method.apply(model)
    layers = [m for m in model.modules() if isinstance(m, KasaLayer)]
    with torch.no_grad():
        for m in layers:  # away from the init, where B = 0 hides B's term
            m.lora_B.normal_()
    per_layer = sum(beta * m.l2() + gamma * (m.l3_paper() if form == "paper" else m.l3_reference())
                    for m in layers)
    if form == "reference":
        per_layer = per_layer / len(layers)
    batched = method.regularization_loss(model)
    torch.testing.assert_close(batched, per_layer, rtol=1e-6, atol=1e-7)
    params = [p for m in layers for p in (m.lora_A, m.lora_B, m.lora_diag)]
    g_batched = torch.autograd.grad(batched, params, allow_unused=True)
    g_ref = torch.autograd.grad(per_layer, params, allow_unused=True)
    for a, b in zip(g_batched, g_ref):
        if a is None or b is None:
            assert a is None and b is None or float((a if a is not None else b).abs().max()) == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_singular_values_off_has_no_l2():
    model = TINY_MODELS["bert"]()
    method = build_method("kasa", r=4, singular_values="off", beta=1.0, gamma=0.0)
    method.apply(model)
    assert float(method.regularization_loss(model)) == 0.0
