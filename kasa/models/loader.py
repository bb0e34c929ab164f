"""Backbones: load a model by hub id or local path, with a task head, in the dtype asked for.

Two names resolve to offline assets that ship in PyPI packages (see :mod:`kasa.assets`):
``minilm`` (all-MiniLM-L6-v2, BERT) and ``smollm2`` (SmolLM2-135M-Instruct, Llama). Anything else is
a hub id or a local folder, loaded by the real transformers code path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kasa import assets
from kasa.errors import ModelLoadError  # noqa: F401  (re-exported)

TASKS = ("seq_cls", "causal_lm")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
OFFLINE_ALIASES = {"minilm": assets.minilm_path, "smollm2": assets.smollm2_path}



def looks_local_path(name: str) -> bool:
    """A path no hub id can be: absolute, ``./``, ``../`` or ``~`` (``org/name`` is a hub id)."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def resolve_path(name_or_path: str) -> str:
    """Map an offline alias to its folder; hub ids and local paths pass through."""
    if name_or_path in OFFLINE_ALIASES:
        return str(OFFLINE_ALIASES[name_or_path]())
    return name_or_path


def _dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "auto"):
        return None
    if name not in _DTYPES:
        raise ModelLoadError(f"unknown dtype '{name}'; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def load_tokenizer(name_or_path: str, revision: str | None = None, padding_side: str | None = None):
    from transformers import AutoTokenizer

    path = resolve_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as exc:
        raise ModelLoadError(_load_hint(name_or_path, exc)) from exc
    if tok.pad_token is None:
        # Causal LMs often lack a pad token; padding positions are masked out of the loss anyway.
        tok.pad_token = tok.eos_token
    if padding_side:
        tok.padding_side = padding_side
    return tok


def load_model(name_or_path: str, task: str = "seq_cls", num_labels: int = 2, dtype: str | None = None,
               revision: str | None = None, gradient_checkpointing: bool = False,
               attn_implementation: str | None = None, **kwargs: Any) -> nn.Module:
    """A transformers model with the head ``task`` needs (``seq_cls``: ``num_labels`` outputs, 1 = regression)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise ModelLoadError(f"unknown model task '{task}'; use one of {TASKS}")
    path = resolve_path(name_or_path)
    extra: dict[str, Any] = dict(kwargs)
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    if _dtype(dtype) is not None:
        extra["dtype"] = _dtype(dtype)
    try:
        if task == "seq_cls":
            if num_labels == 1:
                extra.setdefault("problem_type", "regression")
            # A checkpoint with another head size (e.g. an MNLI model for RTE) gets a fresh head.
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                       revision=revision,
                                                                       ignore_mismatched_sizes=True, **extra)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, revision=revision, **extra)
    except OSError as exc:
        raise ModelLoadError(_load_hint(name_or_path, exc)) from exc
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id if task == "causal_lm" else 0
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of a transformers model, KV cache off
    (``model.gradient_checkpointing``)."""
    # transformers 5 renamed it (the old name warns that it goes in v6); older releases have only the old one
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def _load_hint(name: str, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    if Path(name).expanduser().exists():
        return f"could not load model from local path '{name}': {exc}"
    if looks_local_path(name):  # no hub id looks like this: say what is wrong
        return f"model path '{name}' does not exist (give a local checkpoint folder or a hub id)"
    where = "the hub is unreachable or HF_HUB_OFFLINE=1" if offline else "it could not be downloaded"
    return (f"model '{name}' is not available: {where}. Use model=minilm or model=smollm2 offline, "
            f"point model.name_or_path at a local checkpoint, or run where the hub is reachable. ({exc})")
