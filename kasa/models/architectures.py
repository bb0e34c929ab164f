"""The paper's model architectures, shipped as their public config.json values (no download).

``kasa/models/arch/<name>.json`` holds the hub config of each model (hidden sizes, layers, heads, kv heads,
vocabulary, intermediate sizes, ``model_type``) plus a ``_kasa`` block: the hub id, the task the paper runs
it on, and the published parameter count with what that count covers. :func:`meta_model` builds the model
on the ``meta`` device: shapes only, nothing allocated, so a 13B model costs a few hundred milliseconds.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

ARCH_DIR = Path(__file__).with_name("arch")
TASKS = ("seq_cls", "causal_lm")


def arch_names() -> list[str]:
    """Names of the shipped architectures (``roberta-base``, ``llama-2-7b``, ...)."""
    return sorted(p.stem for p in ARCH_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def _raw(name: str) -> dict[str, Any]:
    path = ARCH_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown architecture '{name}'; shipped: {' '.join(arch_names())}")
    return json.loads(path.read_text())


def arch_info(name: str) -> dict[str, Any]:
    """The ``_kasa`` block: ``hub_id``, default ``task``, ``published_params``, ``published_counts``."""
    return dict(_raw(name)["_kasa"])


def arch_config(name: str):
    """The architecture's ``transformers.PretrainedConfig`` (built locally, never from the hub)."""
    from transformers import AutoConfig

    values = {k: v for k, v in _raw(name).items() if k != "_kasa"}
    return AutoConfig.for_model(values.pop("model_type"), **values)


def meta_model(name: str, task: str | None = None, num_labels: int = 2, layers: int | None = None) -> nn.Module:
    """Build ``name`` on the meta device with a task head: ``seq_cls`` (sequence classification) or
    ``causal_lm``; ``None`` takes the task the paper uses the model for. ``layers``: only that many transformer
    blocks (the memory planner measures a shallow copy and extrapolates)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    task = task or arch_info(name)["task"]
    if task not in TASKS:
        raise ValueError(f"task='{task}' is unknown; choose one of {list(TASKS)}")
    cfg = arch_config(name)
    if layers is not None:
        cfg.num_hidden_layers = layers  # GPT-2's n_layer through its attribute map
    if task == "seq_cls":
        cfg.num_labels = num_labels
        if getattr(cfg, "pad_token_id", None) is None:  # decoder classifiers need one to find the last token
            cfg.pad_token_id = getattr(cfg, "eos_token_id", 0) or 0
    auto = AutoModelForSequenceClassification if task == "seq_cls" else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(cfg)
    return model


def backbone_parameter_count(name: str) -> int:
    """Parameters of the model in the form its published count refers to (see ``published_counts``).

    Encoders: the bare ``AutoModel`` with its pooler (what "125M" for RoBERTa-base counts). Decoders: the
    causal-LM model, tied embeddings counted once.
    """
    from transformers import AutoModel

    info = arch_info(name)
    if info["task"] == "causal_lm":
        model = meta_model(name, "causal_lm")
    else:
        with torch.device("meta"):
            model = AutoModel.from_config(arch_config(name))
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCH_DIR", "TASKS", "arch_names", "arch_info", "arch_config", "meta_model", "backbone_parameter_count"]
