"""Tiny offline runs for notebooks, examples and tests: a 2-layer BERT with MiniLM's real tokenizer, trained on
project-made sentiment snippets in VADER's ratings format (the default dataset's format), seconds per run.

    from kasa.analysis.tiny import tiny_run
    res = tiny_run("runs/a", "method=lora", "method.r=2")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TINY_OVERRIDES = ("trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false",
                  "benchmark.batch_size=8", "logger=csv")


# One adjective band per SST-5 class (the default dataset's bins), at the band's centre rating.
_BANDS = [(-3.2, ["dreadful", "unwatchable", "awful", "painful"]), (-1.6, ["dull", "clumsy", "tedious", "flat"]),
          (0.0, ["ordinary", "uneven", "familiar", "modest"]), (1.6, ["charming", "engaging", "solid", "likeable"]),
          (3.2, ["brilliant", "masterful", "stunning", "superb"])]
_NOUNS = ["film", "script", "cast", "ending", "story", "score", "direction", "pacing", "dialogue", "premise"]
_TAILS = ["from start to finish", "for most of its length", "in almost every scene", "despite the budget",
          "and the audience knows it", ""]
RATINGS_FILE = "ratings_GroundTruth.txt"


def write_tiny_ratings(path: str | Path, n: int = 250, seed: int = 0) -> Path:
    """``n`` distinct project-made snippets in VADER's ``*_GroundTruth.txt`` format (``id<TAB>mean rating on
    -4..4<TAB>text``), the five classes balanced, each rating inside its class's band."""
    import random

    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        centre, adjectives = _BANDS[len(rows) % len(_BANDS)]
        text = f"the {rng.choice(_NOUNS)} is {rng.choice(adjectives)} {rng.choice(_TAILS)}".strip()
        if text in seen:
            text = f"{text} ({len(rows)})"
        seen.add(text)
        rows.append(f"{len(rows) + 1}\t{centre + rng.uniform(-0.7, 0.7):.4f}\t{text}")
    path = Path(path)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def tiny_overrides(model_dir: str | Path) -> list[str]:
    """Overrides that train the default classification run on a tiny checkpoint (:func:`tiny_model_dir`) and the
    project-made ratings saved beside it."""
    model_dir = Path(model_dir)
    return [f"model.name_or_path={model_dir}", f"dataset.source_args.path={model_dir / RATINGS_FILE}"]


def tiny_model_dir(path: str | Path | None = None) -> Path:
    """A tiny BERT (hidden 32, 2 layers, 5 labels) and :func:`write_tiny_ratings`'s snippets, saved once under the
    kasa cache (or ``path``)."""
    from kasa.assets import build_once, cache_dir

    out = Path(path) if path else Path(cache_dir()) / "tiny-bert"
    # a cache from before the ratings were saved with the model is not ready: it is rebuilt
    return build_once(out, lambda d: (d / "config.json").exists() and (d / RATINGS_FILE).exists(), _save_tiny_bert)


def _save_tiny_bert(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kasa.assets import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=128, num_labels=5)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    write_tiny_ratings(out / RATINGS_FILE)


def tiny_config(*overrides: str, model_dir: str | Path | None = None):
    """``conf/train.yaml`` composed with the tiny model and a short schedule, then ``overrides``."""
    from kasa.config import compose

    return compose([*tiny_overrides(tiny_model_dir(model_dir)), *TINY_OVERRIDES, *overrides])


def tiny_run(run_dir: str | Path, *overrides: str, callbacks: list | None = None) -> dict[str, Any]:
    """Train one tiny configuration into ``run_dir`` and return its results (see :func:`kasa.recipe.run`)."""
    from kasa.recipe import run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run(tiny_config(*overrides), run_dir=run_dir, callbacks=callbacks)
