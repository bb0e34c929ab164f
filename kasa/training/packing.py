"""Packing of causal-LM training examples (``benchmark.packing=true``): several examples share one row of at most
``benchmark.max_length`` tokens, so a batch computes examples instead of padding.

Each example keeps its own position ids (``0, 1, ...`` restarting at every example), and a packed batch carries no
``attention_mask`` and ``use_cache=False``: transformers (5.x) then finds the examples from the restarts of the
position ids and builds the block-diagonal causal mask itself (SDPA, eager and flex attention), and FlashAttention-2
takes its variable-length path from the same position ids, so attention never crosses examples. The first token of
every example is labelled -100: it is never predicted from the example before it, exactly as in a row of its own.
The loss stays the mean over the labelled tokens of the batch, so a packed batch has the loss and gradients of the
same examples padded (``tests/training/test_packing.py``).

Rows are built once (:func:`pack_rows`, best-fit decreasing: deterministic, the same on every data-parallel rank);
the epoch order of the rows comes from :class:`kasa.training.samplers.EpochSampler` as for unpacked examples. A
batch is ``benchmark.batch_size`` rows, so an epoch has fewer optimiser steps than unpacked.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import torch

IGNORE_INDEX = -100  # the label cross-entropy skips (kasa.training.causal_lm.IGNORE_INDEX)

# config.json ``model_type``s whose transformers modelling code restarts attention at the position-id restarts (a
# tiny random model of each gives packed logits equal to separate ones: tests/training/test_packing.py). Left out
# on purpose: models that derive positions from the attention mask (opt) or use ALiBi biases (bloom, mpt, falcon's
# alibi variants), which would silently attend across examples.
PACKING_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "gemma", "gemma3_text", "qwen2", "qwen3", "gpt2",
                                 "gpt_neox", "gptj", "phi", "phi3", "olmo", "olmo2", "starcoder2"})


def packing_refusal(model_type: str | None, model: str) -> str | None:
    """The one-line reason ``model`` (of ``model_type``) cannot be trained packed, else ``None``."""
    if model_type is None or model_type in PACKING_MODEL_TYPES:
        return None
    return (f"benchmark.packing=true: model={model} is a '{model_type}' model, whose attention is not known to restart "
            f"at each packed example (packing is checked for: {', '.join(sorted(PACKING_MODEL_TYPES))}); use "
            "benchmark.group_by_length=true instead")


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of total length at most ``capacity``: best-fit decreasing (each
    example, longest first, goes into the fullest row it fits, ties to the earlier row), deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    shortest = min(lengths, default=0)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"an example of {n} tokens does not fit a row of {capacity}")
        j = bisect.bisect_left(free, (n, -1))
        if j == len(free):
            rows.append([i])
            room, row = capacity - n, len(rows) - 1
        else:
            room, row = free.pop(j)
            rows[row].append(i)
            room -= n
        if room >= max(shortest, 1):
            bisect.insort(free, (room, row))
    return rows


def packed_row(examples: Sequence[dict]) -> dict:
    """One row from tokenised examples (``input_ids``/``labels`` lists): concatenated, position ids restarting at
    each example, and each example's first label -100."""
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for ex in examples:
        ids += ex["input_ids"]
        labels += [IGNORE_INDEX, *ex["labels"][1:]]
        pos += range(len(ex["input_ids"]))
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "n_examples": len(examples)}


def collate_packed(batch: Sequence[dict], pad_id: int) -> dict:
    """A batch of packed rows, right-padded to its longest row: the padding is one more "example" (its own position
    ids from 0, labels -100), so nothing real attends to it. No ``attention_mask`` (it would switch off the
    detection of the examples) and ``use_cache=False`` (a cache does too)."""
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.tensor(b["input_ids"])
        labels[i, :k] = torch.tensor(b["labels"])
        pos[i, :k] = torch.tensor(b["position_ids"])
        pos[i, k:] = torch.arange(n - k)
    return {"input_ids": ids, "position_ids": pos, "labels": labels, "use_cache": False}
