"""MiLoRA (not in HF PEFT): checked against its definition, the r minor singular triplets of W."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS
from svd_family_helpers import ALPHA, TARGETS, R, check_merge_unmerge, fresh_pair, max_diff, outputs, perturb_adapters

from kasa.methods import MethodError, build_method, get_weight
from kasa.methods.pissa import ResidualLoraLayer

TOL = 1e-5
MODELS = ["bert", "gpt2", "llama"]


def _ours(model, name: str, **kw):
    method = build_method("milora", r=R, alpha=ALPHA, dropout=0.0, target_modules=TARGETS[name], **kw)
    method.apply(model)
    return method


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ResidualLoraLayer)]


@pytest.mark.parametrize("name", MODELS)
def test_minor_triplets_and_exact_residual(name):
    orig, model = fresh_pair(name)
    method = _ours(model, name)
    assert max_diff(outputs(orig), outputs(model)) < TOL
    for n, layer in _layers(model):
        W = get_weight(orig.get_submodule(n)).detach()
        k = min(W.shape)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        dW = layer.delta_weight()
        # residual + adapter reproduces W
        assert max_diff(get_weight(layer.base_layer) + dW, W) < TOL, n
        # the adapter is exactly the minor part, the residual exactly the principal part
        assert max_diff(dW, U[:, k - R:] * S[k - R:] @ Vh[k - R:]) < TOL, n
        assert max_diff(get_weight(layer.base_layer), U[:, :k - R] * S[:k - R] @ Vh[:k - R]) < TOL, n
        # B spans the minor left directions, A the minor right directions
        Um, Vm = U[:, k - R:], Vh[k - R:].T
        B, A = layer.lora_B.detach(), layer.lora_A.detach()
        assert max_diff(B - Um @ (Um.T @ B), torch.zeros_like(B)) < TOL, n
        assert max_diff(A.T - Vm @ (Vm.T @ A.T), torch.zeros_like(A.T)) < TOL, n
        # split evenly as PiSSA: A = sqrt(S/s) Vh, B = U sqrt(S/s), so A A^T = B^T B = diag(S)/s
        expected = torch.diag(S[k - R:] / layer.scaling)
        assert max_diff(A @ A.T, expected) < TOL and max_diff(B.T @ B, expected) < TOL, n
        assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert method.trainable_parameter_count(model) == sum(
        m.lora_A.numel() + m.lora_B.numel() for _, m in _layers(model))


@pytest.mark.parametrize("name", MODELS)
def test_merge_and_round_trip(name):
    torch.manual_seed(0)
    base = TINY_MODELS[name]()
    model = copy.deepcopy(base)
    method = _ours(model, name)
    perturb_adapters(model)
    ref = outputs(model)
    check_merge_unmerge(method, model, ref, TOL)
    sd = method.adapter_state_dict(model)
    fresh = copy.deepcopy(base)
    method2 = _ours(fresh, name)
    method2.load_adapter_state_dict(fresh, sd)
    assert max_diff(outputs(fresh), ref) < TOL
    # a merged model takes the state dict too
    fresh2 = copy.deepcopy(base)
    method3 = _ours(fresh2, name)
    method3.merge(fresh2)
    method3.load_adapter_state_dict(fresh2, sd)
    assert max_diff(outputs(fresh2), ref) < TOL


def test_errors():  # the yaml == dataclass check for every method: tests/test_configs.py
    with pytest.raises(MethodError, match="niter"):
        build_method("milora", niter=2)  # the minor triplets need the full SVD
    a, _ = fresh_pair("bert")
    with pytest.raises(MethodError, match="r=32"):
        build_method("milora", r=32, target_modules=["query"]).apply(a)


def test_alpha_follows_r_by_default_as_the_authors_code():
    from kasa.methods import AdapterLayer

    for r in (4, 8):
        method = build_method("milora", r=r, target_modules=TARGETS["bert"])
        assert method.config.alpha is None and method.alpha == r and method.scaling == 1.0
        model = TINY_MODELS["bert"]()
        method.apply(model)
        assert {m.scaling for m in model.modules() if isinstance(m, AdapterLayer)} == {1.0}
    assert build_method("milora", r=4, alpha=16.0).scaling == 4.0  # an explicit alpha still wins
