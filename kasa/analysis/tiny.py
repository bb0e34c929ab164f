"""Tiny offline runs for notebooks and examples: a 2-layer BERT with MiniLM's real tokenizer, seconds per run.

    from kasa.analysis.tiny import tiny_run
    res = tiny_run("runs/a", "method=lora", "method.r=2")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TINY_OVERRIDES = ("trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false",
                  "benchmark.batch_size=8", "logger=csv")


def tiny_model_dir(path: str | Path | None = None) -> Path:
    """A tiny BERT (hidden 32, 2 layers, 7 labels) saved once under the kasa cache (or ``path``)."""
    from ..assets import cache_dir, minilm_path

    out = Path(path) if path else Path(cache_dir()) / "tiny-bert"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=128, num_labels=7)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    BertForSequenceClassification(cfg).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(out) if not out.exists() else None
    return out


def tiny_config(*overrides: str, model_dir: str | Path | None = None):
    """``conf/train.yaml`` composed with the tiny model and a short schedule, then ``overrides``."""
    from hydra import compose, initialize_config_dir

    from ..train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"model.name_or_path={tiny_model_dir(model_dir)}", *TINY_OVERRIDES,
                                           *overrides])


def tiny_run(run_dir: str | Path, *overrides: str, callbacks: list | None = None) -> dict[str, Any]:
    """Train one tiny configuration into ``run_dir`` and return its results (see :func:`kasa.train.run`)."""
    from ..train import run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run(tiny_config(*overrides), run_dir=run_dir, callbacks=callbacks)
