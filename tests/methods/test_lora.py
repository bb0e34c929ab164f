"""LoRA parity with HF PEFT on the same weights, on Linear and Conv1D layers."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_inputs

from kasa.methods import build_method
from kasa.methods.lora import LoraLayer

TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj", "up_proj"]}


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
@pytest.mark.parametrize("use_rslora", [False, True])
def test_parity_with_hf_peft_lora(arch, use_rslora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = TINY_MODELS[arch]()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    theirs = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch],
                                               use_rslora=use_rslora, fan_in_fan_out=arch == "gpt2"))
    method = build_method("lora", r=4, alpha=8, target_modules=TARGETS[arch], use_rslora=use_rslora)
    method.apply(ours)
    g = torch.Generator().manual_seed(3)
    n_layers = 0
    for name, layer in ours.named_modules():
        if isinstance(layer, LoraLayer):
            n_layers += 1
            other = theirs.base_model.model.get_submodule(name)
            with torch.no_grad():
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))
                other.lora_A["default"].weight.copy_(layer.lora_A)
                other.lora_B["default"].weight.copy_(layer.lora_B)
    assert n_layers > 0
    x = tiny_inputs()
    torch.testing.assert_close(model_output(ours, x), theirs(**x).logits, atol=1e-5, rtol=0)
    assert method.trainable_parameter_count(ours) == sum(
        p.numel() for n, p in theirs.named_parameters() if p.requires_grad and "lora_" in n)


def test_lora_init_matches_hf_peft_distribution():
    """Same init rule: A Kaiming-uniform(a=sqrt 5) bound 1/sqrt(in), B zero."""
    torch.manual_seed(0)
    model = TINY_MODELS["bert"]()
    build_method("lora", r=4, target_modules=["query"]).apply(model)
    layer = model.bert.encoder.layer[0].attention.self.query
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.lora_A.abs().max() <= 1 / layer.in_features ** 0.5 + 1e-7
