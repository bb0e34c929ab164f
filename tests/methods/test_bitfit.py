"""BitFit on the tiny models: only biases (and the head) train; Llama (no biases) is refused."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_inputs, train_steps

from kasa.methods import MethodError, build_method


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_forward_finite_and_only_biases_train(name):
    torch.manual_seed(0)
    model = TINY_MODELS[name]()
    base = copy.deepcopy(model)
    method = build_method("bitfit")
    method.apply(model)
    x = tiny_inputs()
    with torch.no_grad():
        out = model_output(model, x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, model_output(base, x), rtol=0, atol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    body = {n for n in trainable if not n.startswith("classifier.")}
    assert body and all(n.endswith(".bias") for n in body)
    assert "bert.encoder.layer.0.output.LayerNorm.bias" in trainable or name != "bert"
    if name == "bert":
        assert {"classifier.weight", "classifier.bias"} <= trainable
        # the head does not count (paper convention), every body bias does
        n_bias = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias") and n in body)
        assert method.trainable_parameter_count(model) == n_bias


def test_only_trainable_move_and_round_trip():
    torch.manual_seed(0)
    model = TINY_MODELS["bert"]()
    fresh = copy.deepcopy(model)
    method = build_method("bitfit")
    method.apply(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, [0, 2])
    model.eval()
    for n, p in model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        if not p.requires_grad:
            assert not moved, n
    assert not torch.equal(before["bert.encoder.layer.0.attention.self.query.bias"],
                           model.bert.encoder.layer[0].attention.self.query.bias)
    sd = method.adapter_state_dict(model)
    assert all(k.endswith(".bias") or k.startswith("classifier.") for k in sd)
    method2 = build_method("bitfit")
    method2.apply(fresh)
    method2.load_adapter_state_dict(fresh, sd)
    x = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model_output(fresh, x), model_output(model, x))
        # merge is a no-op: nothing to fold
        ref = model_output(model, x)
        method.merge(model)
        method.unmerge(model)
        torch.testing.assert_close(model_output(model, x), ref, rtol=0, atol=0)


def test_llama_has_no_bias_terms():
    with pytest.raises(MethodError, match="bitfit needs bias terms; LlamaForCausalLM has none"):
        build_method("bitfit").apply(TINY_MODELS["llama"]())


def test_target_modules_restrict_biases():
    model = TINY_MODELS["bert"]()
    method = build_method("bitfit", target_modules=["query"])
    method.apply(model)
    body = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("classifier.")}
    assert body == {f"bert.encoder.layer.{i}.attention.self.query.bias" for i in range(2)}
    with pytest.raises(MethodError, match="select no bias"):
        build_method("bitfit", target_modules=["nothing_here"]).apply(TINY_MODELS["bert"]())
