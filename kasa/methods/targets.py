"""Which modules of a model a method wraps (``target_modules``) and trains as its task head (``modules_to_save``)."""

from __future__ import annotations

import re

from torch import nn

from .errors import MethodError
from .weights import is_linear_like

# Preset targets per architecture (``model.config.model_type``), as in the papers' setups.
TARGET_PRESETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
}
# Task heads that train with the adapter (new, randomly initialised layers).
HEAD_PRESETS: dict[str, list[str]] = {
    "deberta-v2": ["classifier", "pooler"],
    "default": ["classifier", "score"],
}


def match_target(name: str, targets: list[str] | str) -> bool:
    """HF PEFT's rule: a string is a full-match regex; a list matches names equal to or ending in '.' + entry."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def model_type(model: nn.Module) -> str:
    """``model.config.model_type`` (``""`` for a model without a transformers config)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", "") or ""


def preset_targets(model: nn.Module) -> list[str]:
    """The paper setups' target modules for ``model``'s architecture (:data:`TARGET_PRESETS`)."""
    mt = model_type(model)
    if mt not in TARGET_PRESETS:
        raise MethodError(
            f"no preset target modules for architecture '{mt or type(model).__name__}'; "
            f"pass target_modules=[...] (presets exist for {sorted(TARGET_PRESETS)})"
        )
    return list(TARGET_PRESETS[mt])


def preset_heads(model: nn.Module) -> list[str]:
    """The task-head modules that train with the adapter (:data:`HEAD_PRESETS`)."""
    return HEAD_PRESETS.get(model_type(model), HEAD_PRESETS["default"])


def sample_linear_names(model: nn.Module, k: int = 6) -> str:
    """A few linear-layer names of ``model`` for an error message about targets that match nothing."""
    names = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if n and is_linear_like(m)})
    return ", ".join(names[:k * 2]) or "none"


__all__ = ["HEAD_PRESETS", "TARGET_PRESETS", "match_target", "model_type", "preset_heads", "preset_targets",
           "sample_linear_names"]
