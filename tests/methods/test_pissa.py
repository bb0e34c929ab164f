"""PiSSA against HF PEFT 0.21 (``init_lora_weights="pissa"`` / ``"pissa_niter_N"``) on the tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from svd_family_helpers import (
    ALPHA,
    TARGETS,
    R,
    align_rows,
    check_merge_unmerge,
    fresh_pair,
    max_diff,
    outputs,
    peft_base_weight,
    peft_factors,
    peft_layers,
    peft_trainable,
    perturb_adapters,
    same_adapters,
)

from kasa.methods import MethodError, build_method, get_weight

TOL = 1e-5
MODELS = ["bert", "gpt2", "llama"]


def _peft_pissa(model, name: str, init: str):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS[name], init_lora_weights=init)
    return get_peft_model(model, cfg)


def _ours(model, name: str, **kw):
    method = build_method("pissa", r=R, alpha=ALPHA, target_modules=TARGETS[name], **kw)
    method.apply(model)
    return method


def _compare_with_peft(peft_model, ours, method):
    for n, theirs, mine in peft_layers(peft_model, ours):
        assert max_diff(peft_base_weight(theirs), get_weight(mine.base_layer)) < TOL, n
        A_p, B_p = peft_factors(theirs)
        assert max_diff(B_p @ A_p, mine.lora_B @ mine.lora_A) < TOL, n
        assert max_diff(align_rows(mine.lora_A, A_p), A_p) < TOL, n
        assert max_diff(align_rows(mine.lora_B.T, B_p.T), B_p.T) < TOL, n
        assert mine.scaling == theirs.scaling["default"]
    assert method.trainable_parameter_count(ours) == peft_trainable(peft_model)
    assert max_diff(outputs(peft_model), outputs(ours)) < TOL
    # identical adapter weights (as if trained) give identical outputs
    same_adapters(peft_model, ours)
    assert max_diff(outputs(peft_model), outputs(ours)) < TOL


@pytest.mark.parametrize("name", MODELS)
def test_full_svd_matches_peft(name):
    a, b = fresh_pair(name)
    peft_model = _peft_pissa(a, name, "pissa")
    method = _ours(b, name)
    _compare_with_peft(peft_model, b, method)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_randomized_svd_matches_peft(name, monkeypatch):
    # Both sides call torch.svd_lowrank(W, r, niter); reseeding on each call removes the difference in how
    # many random numbers each library draws before it (PEFT inits nn.Linear factors first).
    import peft.tuners.lora.layer as peft_layer

    real = torch.svd_lowrank

    def seeded(*args, **kwargs):
        torch.manual_seed(1234)
        return real(*args, **kwargs)

    monkeypatch.setattr(peft_layer, "svd_lowrank", seeded, raising=False)  # peft < 0.22 binds it at import
    monkeypatch.setattr(torch, "svd_lowrank", seeded)
    a, b = fresh_pair(name)
    peft_model = _peft_pissa(a, name, "pissa_niter_2")
    method = _ours(b, name, niter=2)
    _compare_with_peft(peft_model, b, method)


def test_init_keeps_output_and_residual_is_exact():
    a, b = fresh_pair("gpt2")
    method = _ours(b, "gpt2")
    assert max_diff(outputs(a), outputs(b)) < TOL
    for n, layer in ((n, m) for n, m in b.named_modules() if hasattr(m, "residual_init_A")):
        W = get_weight(a.get_submodule(n))
        restored = get_weight(layer.base_layer) + layer.delta_weight()
        assert max_diff(restored, W) < TOL
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        assert max_diff(layer.delta_weight(), U[:, :R] * S[:R] @ Vh[:R]) < TOL  # principal part
    method.set_adapter_enabled(b, False)
    assert max_diff(outputs(a), outputs(b)) > 1e-4  # disabled: the residual base alone


@pytest.mark.parametrize("name", MODELS)
def test_merge_and_round_trip(name):
    torch.manual_seed(0)
    from conftest import TINY_MODELS

    base = TINY_MODELS[name]()
    model = copy.deepcopy(base)
    method = _ours(model, name, niter=1)  # randomized: a fresh apply differs, the saved init must fix it
    perturb_adapters(model)
    ref = outputs(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    check_merge_unmerge(method, model, ref, TOL)
    for n, p in model.named_parameters():
        assert max_diff(p, before[n]) < TOL, n

    sd = method.adapter_state_dict(model)
    assert any(k.endswith("residual_init_A") for k in sd)
    torch.manual_seed(99)
    fresh = copy.deepcopy(base)
    method2 = _ours(fresh, name, niter=1)
    assert max_diff(outputs(fresh), ref) > 1e-5
    method2.load_adapter_state_dict(fresh, sd)
    assert max_diff(outputs(fresh), ref) < TOL


def test_export_lora_on_original_base():
    torch.manual_seed(0)
    from conftest import TINY_MODELS

    base = TINY_MODELS["llama"]()
    model = copy.deepcopy(base)
    method = _ours(model, "llama")
    perturb_adapters(model)
    lora, sd = method.export_lora(model)
    lora.apply(base)
    lora.load_adapter_state_dict(base, sd)
    assert max_diff(outputs(base), outputs(model)) < TOL


def test_errors():
    with pytest.raises(MethodError, match="niter"):
        build_method("pissa", niter=-1)
    a, _ = fresh_pair("bert")
    with pytest.raises(MethodError, match="r=32"):
        build_method("pissa", r=32, target_modules=["query"]).apply(a)

