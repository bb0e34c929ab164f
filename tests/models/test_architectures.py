"""Shipped architecture configs: meta-device models match the published parameter counts."""

from __future__ import annotations

import pytest
import torch

from kasa.models.architectures import arch_config, arch_info, arch_names, backbone_parameter_count, meta_model

PAPER_MODELS = ["roberta-base", "roberta-large", "deberta-v3-base", "gpt2-medium", "gpt2-large", "llama-2-7b",
                "llama-2-13b", "llama-3-8b", "mistral-7b", "gemma-7b"]


def test_every_paper_model_is_shipped():
    assert sorted(PAPER_MODELS) == arch_names()


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_published_size_within_1_percent(name):
    # What is compared (``published_counts`` in the JSON): encoders -> the bare AutoModel with pooler
    # (RoBERTa-base 124,645,632 = the "125M"); decoders -> the causal-LM model, tied embeddings once.
    info = arch_info(name)
    n = backbone_parameter_count(name)
    assert abs(n / info["published_params"] - 1) <= 0.01, (name, n, info["published_params"])


@pytest.mark.parametrize("name", ["roberta-base", "llama-3-8b"])
def test_meta_model_allocates_nothing(name):
    model = meta_model(name)
    assert all(p.device == torch.device("meta") for p in model.parameters())
    assert model.config.model_type == arch_config(name).model_type


def test_tasks_and_heads():
    enc = meta_model("roberta-base", "seq_cls", num_labels=3)
    assert enc.config.num_labels == 3 and hasattr(enc, "classifier")
    dec = meta_model("llama-2-7b", "seq_cls")
    assert hasattr(dec, "score")
    assert hasattr(meta_model("gpt2-medium"), "lm_head")
    with pytest.raises(ValueError, match="task"):
        meta_model("roberta-base", "nope")
    with pytest.raises(KeyError, match="unknown architecture"):
        arch_config("gpt-5")


def test_known_config_values():
    c = arch_config("llama-3-8b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_key_value_heads, c.vocab_size) == (4096, 32, 8, 128256)
    assert arch_config("deberta-v3-base").model_type == "deberta-v2"
    assert arch_config("gemma-7b").head_dim == 256
