"""DoRA against HF PEFT 0.21 (``LoraConfig(use_dora=True)``) on the tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_inputs
from svd_family_helpers import (
    ALPHA,
    TARGETS,
    R,
    fresh_pair,
    max_diff,
    outputs,
    peft_base_weight,
    peft_layers,
    peft_trainable,
    perturb_adapters,
    same_adapters,
)

from kasa.methods import build_method, get_weight

TOL = 1e-5
MODELS = ["bert", "gpt2", "llama"]


def _pair(name: str, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    a, b = fresh_pair(name)
    peft_model = get_peft_model(a, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=dropout,
                                              target_modules=TARGETS[name], use_dora=True))
    method = build_method("dora", r=R, alpha=ALPHA, dropout=dropout, target_modules=TARGETS[name])
    method.apply(b)
    return peft_model, b, method


@pytest.mark.parametrize("name", MODELS)
def test_init_outputs_and_gradients_match_peft(name):
    peft_model, ours, method = _pair(name)
    for n, theirs, mine in peft_layers(peft_model, ours):
        assert max_diff(theirs.lora_magnitude_vector["default"].weight, mine.lora_magnitude) < TOL, n
        assert max_diff(mine.lora_magnitude, get_weight(mine.base_layer).norm(dim=1)) < TOL, n
        assert max_diff(peft_base_weight(theirs), get_weight(mine.base_layer)) == 0, n
        assert not mine.lora_B.abs().sum()
    assert method.trainable_parameter_count(ours) == peft_trainable(peft_model)
    assert max_diff(outputs(peft_model), outputs(ours)) < TOL

    same_adapters(peft_model, ours)
    assert max_diff(outputs(peft_model), outputs(ours)) < TOL
    # gradients: the weight norm is a constant in both (DoRA sec. 4.3)
    x = tiny_inputs(3)
    for m in (peft_model, ours):
        m.zero_grad()
        model_output(m, x).pow(2).sum().backward()
    for n, theirs, mine in peft_layers(peft_model, ours):
        for g_p, p_o in ((theirs.lora_A["default"].weight.grad, mine.lora_A),
                         (theirs.lora_B["default"].weight.grad, mine.lora_B),
                         (theirs.lora_magnitude_vector["default"].weight.grad, mine.lora_magnitude)):
            assert g_p is not None and p_o.grad is not None
            assert max_diff(g_p, p_o.grad) < TOL, n


def test_dropout_path_matches_peft():
    # With an active dropout the base branch sees the dropped-out input too; same RNG stream, same masks.
    peft_model, ours, _ = _pair("llama", dropout=0.3)
    same_adapters(peft_model, ours)
    x = tiny_inputs(2)
    outs = []
    for m in (peft_model, ours):
        m.train()
        torch.manual_seed(7)
        with torch.no_grad():
            outs.append(model_output(m, x))
    assert max_diff(*outs) < TOL
    assert max_diff(outs[1], outputs(ours)) > 1e-4  # the dropout did act


@pytest.mark.parametrize("name", MODELS)
def test_merge_matches_peft_and_unmerge_restores(name):
    peft_model, ours, method = _pair(name)
    same_adapters(peft_model, ours)
    ref = outputs(ours)
    before = {n: get_weight(m.base_layer).detach().clone() for n, _, m in peft_layers(peft_model, ours)}
    method.merge(ours)
    peft_model.merge_adapter()
    assert max_diff(outputs(ours), ref) < TOL
    for n, theirs, mine in peft_layers(peft_model, ours):
        assert max_diff(peft_base_weight(theirs), get_weight(mine.base_layer)) < TOL, n
        # delta_weight is the exact change merging made
        assert max_diff(get_weight(mine.base_layer) - before[n], mine.delta_weight()) < TOL, n
    method.unmerge(ours)
    assert max_diff(outputs(ours), ref) < TOL
    for n, _, mine in peft_layers(peft_model, ours):
        assert max_diff(get_weight(mine.base_layer), before[n]) < TOL, n


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_round_trip_onto_fresh_base(name):
    torch.manual_seed(0)
    base = TINY_MODELS[name]()
    model = copy.deepcopy(base)
    method = build_method("dora", r=R, alpha=ALPHA, target_modules=TARGETS[name])
    method.apply(model)
    perturb_adapters(model)
    ref = outputs(model)
    sd = method.adapter_state_dict(model)
    assert any(k.endswith("lora_magnitude") for k in sd)
    fresh = copy.deepcopy(base)
    build_method("dora", r=R, alpha=ALPHA, target_modules=TARGETS[name]).apply(fresh)
    method.load_adapter_state_dict(fresh, sd)
    assert max_diff(outputs(fresh), ref) < TOL
    method.merge(fresh)  # safe merge and a reload while merged
    method.load_adapter_state_dict(fresh, sd)
    assert max_diff(outputs(fresh), ref) < TOL

