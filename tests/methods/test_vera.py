"""VeRA: shared projections, trainable counts and outputs against HF PEFT's VeRA; saving by matrices or key."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _baseline_checks import fresh, perturb_adapters
from conftest import model_output, tiny_inputs

from kasa.methods import build_method
from kasa.methods.vera import VeraLayer

R = 16


@pytest.mark.parametrize("model_name,targets", [("bert", ["query", "value", "intermediate.dense"]),
                                                ("gpt2", ["c_attn", "c_fc"])])
def test_matches_peft(model_name, targets):
    from peft import VeraConfig, get_peft_model

    base = fresh(model_name)
    ours = copy.deepcopy(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(base, VeraConfig(r=R, target_modules=targets, projection_prng_key=7,
                                                     d_initial=0.1, save_projection=True))
    method = build_method("vera", r=R, target_modules=targets, projection_prng_key=7, modules_to_save=[])
    method.apply(ours)
    # the same shared matrices from the same key, bit for bit
    proj = method.projections(ours)
    assert torch.equal(proj.A, peft_model.base_model.vera_A["default"])
    assert torch.equal(proj.B, peft_model.base_model.vera_B["default"])
    # the same trainable parameters
    n_peft = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert method.trainable_parameter_count(ours) == n_peft
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, VeraLayer)}
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules()
                   if hasattr(m, "vera_lambda_b") and "default" in getattr(m, "vera_lambda_b", {})}
    assert sorted(layers) == sorted(peft_layers)
    x = tiny_inputs()
    with torch.no_grad():
        for n, m in layers.items():  # same init, then the same trained-looking values
            pm = peft_layers[n]
            assert torch.equal(m.vera_lambda_d, pm.vera_lambda_d["default"])
            assert torch.equal(m.vera_lambda_b, pm.vera_lambda_b["default"])
        torch.testing.assert_close(model_output(ours, x), model_output(peft_model, x), rtol=0, atol=1e-6)
        perturb_adapters(ours, scale=1.0)
        for n, m in layers.items():
            peft_layers[n].vera_lambda_d["default"].copy_(m.vera_lambda_d)
            peft_layers[n].vera_lambda_b["default"].copy_(m.vera_lambda_b)
        out = model_output(ours, x)
        diff = (out - model_output(peft_model, x)).abs().max().item()
        assert diff < 1e-6, diff
        assert (out - model_output(fresh(model_name), x)).abs().max() > 1e-4  # the adapter does something


def test_key_only_save_rederives_projections():
    model = fresh("bert")
    method = build_method("vera", r=R, projection_prng_key=3, save_projection=False)
    method.apply(model)
    perturb_adapters(model)
    sd = method.adapter_state_dict(model)
    assert "vera_A" not in sd and int(sd["vera_prng_key"]) == 3
    other = fresh("bert")
    method2 = build_method("vera", r=R, projection_prng_key=99)  # the saved key wins
    method2.apply(other)
    assert not torch.equal(method2.projections(other).A, method.projections(model).A)
    method2.load_adapter_state_dict(other, sd)
    assert torch.equal(method2.projections(other).A, method.projections(model).A)
    x = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model_output(other, x), model_output(model, x), rtol=0, atol=0)


def test_projections_are_shared_and_frozen():
    model = fresh("llama")
    method = build_method("vera", r=R)
    method.apply(model)
    layers = [m for m in model.modules() if isinstance(m, VeraLayer)]
    assert len({id(m.vera_projections) for m in layers}) == 1
    proj = layers[0].vera_projections
    assert proj.A.shape == (R, 48) and proj.B.shape == (48, R)  # in_max: down_proj, out_max: up_proj
    assert not any(p.requires_grad for p in proj.parameters())
    assert not any("vera_projections" in k for k in model.state_dict())
