"""Runs every measurement of a profile and writes the Markdown report."""

from __future__ import annotations

import copy
import datetime
import platform
import statistics

import torch

from kasa.perf.core import LABELS, LLAMA7B_TARGET_SHAPES, PROFILES, TARGETS, _fmt_bytes, paired_ratio
from kasa.perf.memory import _buffer_bytes, memory_row
from kasa.perf.methods import all_methods_table
from kasa.perf.steps import (
    bench_lightning,
    bench_merged,
    bench_regularisers,
    bench_steps,
    build_kasa_keeping_removed,
    build_runners,
)
from kasa.perf.truncation import bench_truncation, bench_truncation_model


def run(profile: str, r: int = 8, beta: float = 1e-4, gamma: float = 1e-3, layers: int | None = None,
        skip_truncation: bool = False, threads: int | None = None, skip_methods: bool = False) -> str:
    """Run every measurement of ``profile`` and return the Markdown report."""
    p = copy.deepcopy(PROFILES[profile])
    if layers:
        p.layers = layers
    if threads:
        p.threads = p.trunc_threads = threads
    if p.threads:
        torch.set_num_threads(p.threads)
    if p.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--full needs a CUDA device")
    out: list[str] = []
    dev = torch.cuda.get_device_name() if p.device == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} threads)"
    out.append(f"## kasa.perf --{profile} ({datetime.date.today().isoformat()})\n")
    out.append(f"- device: {dev}; torch {torch.__version__}; dtype {str(p.dtype).removeprefix('torch.')}")
    out.append(f"- model: Llama from config, hidden {p.hidden}, intermediate {p.intermediate}, {p.layers} layers, "
               f"{p.heads} heads, vocab {p.vocab}; batch {p.batch} x seq {p.seq}; targets {', '.join(TARGETS)}; "
               f"r={r}, alpha={2 * r}, beta={beta}, gamma={gamma}")
    out.append(f"- medians of {p.reps} interleaved repetitions (rotated order) after {p.warmup} warm-up rounds; "
               f"{p.threads or torch.get_num_threads()} CPU thread(s) for the step timings\n")

    runners, base = build_runners(p, r, beta, gamma)
    batch = torch.randint(0, p.vocab, (p.batch, p.seq), generator=torch.Generator().manual_seed(1)).to(p.device)
    raw = bench_steps(p, runners, batch)
    steps = {n: statistics.median(v) for n, v in raw.items()}
    floor = steps["frozen"]
    out.append("### Training step (forward + backward + AdamW step)\n")
    out.append("Ratios are medians of per-repetition ratios (both methods timed in the same repetition).\n")
    out.append("| method | step (ms), median | min (ms) | / floor | / LoRA (ours) | over floor (ms) |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for n, s in steps.items():
        out.append(f"| {LABELS[n]} | {s * 1e3:.1f} | {min(raw[n]) * 1e3:.1f} | {paired_ratio(raw, n, 'frozen'):.3f} | "
                   f"{paired_ratio(raw, n, 'lora'):.3f} | {(s - floor) * 1e3:.1f} |")
    over = {n: statistics.median(x - y for x, y in zip(raw[n], raw["frozen"])) for n in raw}
    out.append(f"\nKaSA (ours) / HF PEFT KaSA: {paired_ratio(raw, 'kasa', 'peft_kasa'):.3f}; "
               f"KaSA (ours) / LoRA (ours): {paired_ratio(raw, 'kasa', 'lora'):.3f}; adapter-only cost "
               f"(step - floor, per repetition) KaSA/LoRA: {over['kasa'] / max(over['lora'], 1e-12):.3f}; "
               f"regulariser inside the step (KaSA - KaSA without it, per repetition): "
               f"{statistics.median(x - y for x, y in zip(raw['kasa'], raw['kasa_noreg'])) * 1e3:.1f} ms\n")

    out.append("### Memory per training step\n")
    out.append("Counted: trainable parameters, their gradients, AdamW state, adapter buffers (KaSA's removed factors "
               "with keep_removed=true) and activations autograd saves for backward (saved-tensor hooks, frozen "
               "weights "
               "excluded, each tensor once)." + (" CUDA: peak allocated during one step above the memory "
                                                  "allocated before it." if p.device == "cuda" else
                                                  " CPU: no allocator peak is available."))
    out.append("")
    cols = (["trainable", "grads", "adamw", "buffers", "saved", "total"]
            + (["cuda_peak_step"] if p.device == "cuda" else []))
    out.append("| method | " + " | ".join(cols) + " | total / LoRA (ours) |")
    out.append("|---|" + "---:|" * (len(cols) + 1))
    mem_runners = {**runners, "kasa_keep": build_kasa_keeping_removed(p, r, beta, gamma)}
    mem_runners["kasa_keep"].step(batch)  # AdamW allocates its state on the first step, as the others had
    rows = {n: memory_row(rr, batch, p.device, _buffer_bytes(base)) for n, rr in mem_runners.items()}
    for n, row in rows.items():
        out.append(f"| {LABELS[n]} | " + " | ".join(_fmt_bytes(row[c]) for c in cols)
                   + f" | {row['total'] / rows['lora']['total']:.3f} |")
    del mem_runners["kasa_keep"]
    out.append("")

    regs = bench_regularisers(p, runners["kasa"], runners["peft_kasa"], batch)
    kasa_step = regs.pop("step")
    out.append("### Regulariser (forward + backward of beta * L2 + gamma * L3 alone)\n")
    out.append(f"Timed alone (its own backward), interleaved with KaSA (ours) training steps "
               f"({kasa_step * 1e3:.1f} ms here). Its cost inside a step is the step table's KaSA (ours) "
               f"minus KaSA (ours) without regulariser.\n")
    out.append("| form | ms | % of KaSA (ours) step |")
    out.append("|---|---:|---:|")
    for n, s in regs.items():
        out.append(f"| {n} | {s * 1e3:.2f} | {100 * s / kasa_step:.1f} |")
    out.append("")

    merged = bench_merged(p, runners, batch)
    out.append("### Merged inference (forward, no grad, adapters merged)\n")
    out.append("| method | forward (ms) | / base model |")
    out.append("|---|---:|---:|")
    for n, s in merged.items():
        label = ("base model" if n == "frozen" else LABELS[n] if n == "kasa_unloaded"
                 else LABELS[n] + (" (merge_adapter)" if n.startswith("peft") else " (merged)"))
        out.append(f"| {label} | {s * 1e3:.1f} | {s / merged['frozen']:.3f} |")
    out.append("")
    del runners

    if not skip_methods:
        out.extend(all_methods_table(p, r, batch))

    if not skip_truncation:
        if p.trunc_threads:
            torch.set_num_threads(p.trunc_threads)
        rows = bench_truncation(p, r)
        trunc_threads = torch.get_num_threads()
        if p.threads:
            torch.set_num_threads(p.threads)
        out.append(f"### KaSA truncation of 7B-shaped weights (t = {r}, random Gaussian weights, "
                   f"{trunc_threads if p.device == 'cpu' else 'GPU'} threads)\n")
        out.append("| weight (out x in) | full SVD float32 (s) | fast path auto (s) | speed-up | path | "
                   "rel. diff of truncated weight | content fingerprint (s) |")
        out.append("|---|---:|---:|---:|---|---:|---:|")
        for row in rows:
            shp = " x ".join(map(str, row["shape"]))
            out.append(f"| {shp} | {row['svd']:.2f} | {row['fast']:.2f} | {row['svd'] / row['fast']:.1f}x | "
                       f"{row['used']} | {row['rel_diff']:.1e} | {row['fingerprint']:.3f} |")
        by_shape = {tuple(row["shape"]): row for row in rows}
        if all(s in by_shape or (s[1], s[0]) in by_shape for s in LLAMA7B_TARGET_SHAPES):
            tot = {"svd": 0.0, "fast": 0.0}
            for s, count in LLAMA7B_TARGET_SHAPES.items():
                row = by_shape.get(s) or by_shape[(s[1], s[0])]
                for k in tot:
                    tot[k] += count * row[k]
            out.append(f"\nExtrapolated (per-weight medians x LLaMA-2 7B's 160 q/k/v/up/down weights; "
                       f"up_proj timed as its transpose where not measured): full SVD {tot['svd'] / 60:.1f} min, "
                       f"fast path {tot['fast'] / 60:.1f} min ({tot['svd'] / tot['fast']:.1f}x).")
        out.append("The rel. diff compares against the float32 SVD (itself ~1e-6 off a float64 reference); "
                   "tests/test_svd_fast.py checks the fast path against float64 SVD.\n")
        if p.trunc_model_layers:
            if p.trunc_threads:
                torch.set_num_threads(p.trunc_threads)
            tm = bench_truncation_model(p, r)
            if p.threads:
                torch.set_num_threads(p.threads)
            out.append(f"Whole-model truncation, measured end to end: `method.apply` of KaSA (t = {r}, svd_method "
                       f"auto) on a {tm['layers']}-layer model of this shape ({tm['weights']} q/k/v/up/down weights): "
                       f"**{tm['seconds']:.1f} s**.\n")

    try:
        lt, lt_error = bench_lightning(p, r), ""
    except Exception as e:  # a failure of the training loop is reported; the other tables are kept
        lt, lt_error = None, f"failed: {type(e).__name__}: {e}"
    out.append("### Lightning step vs bare PyTorch loop (KaSA (ours), same model and batch)\n")
    if lt is None:
        out.append(f"The Lightning step {lt_error}.\n")
    else:
        out.append("| loop | step (ms) | / bare |")
        out.append("|---|---:|---:|")
        out.append(f"| bare PyTorch (AdamW) | {lt['bare'] * 1e3:.1f} | 1.000 |")
        out.append(f"| Lightning Trainer + ClassificationModule | {lt['lightning'] * 1e3:.1f} | "
                   f"{lt['lightning'] / lt['bare']:.3f} |")
        out.append("")
    return "\n".join(out)
