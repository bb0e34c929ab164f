"""Trainable-parameter table of every registered method on every paper model, on the meta device.

    python -m kasa.params                                   # all registered methods x all shipped models
    python -m kasa.params --methods kasa lora --models roberta-base roberta-large
    python -m kasa.params --set r=32 alpha=64               # hyper-parameters for the methods that take them
    python -m kasa.params --methods adapter_l_gpt2_medium_0p37m --models gpt2-medium   # a conf/method/ preset

Models are built from the shipped config.json values (:mod:`kasa.models.architectures`) on the meta
device, so nothing is downloaded or allocated. Each method is built with its defaults (the
architecture's preset targets) and applied; the count is the paper's convention
(:meth:`PeftMethod.trainable_parameter_count`: the method's parameters, task head excluded unless
``--include-heads``). Counts the paper or the reference logs give are checked (marked ``ok`` or
``MISMATCH``); the last row is each model's total parameter count, checked against the published size.
``--methods`` also takes the presets of ``conf/method/`` (a yaml extending a method with the settings of a
published table row, e.g. ``vera_roberta_large``); their published counts are checked too.

SVD-based methods run their decomposition on meta tensors (``torch.linalg.svd`` has a meta kernel: the
result has the right shapes and no values), so their counts need no real SVD. Methods are applied inside
:meth:`kasa.methods.PeftMethod.counting_only`, so one whose initialisation needs values (calibration data) may
skip it. A method that still cannot be applied on the meta device (e.g. a rank that depends on the
pretrained spectrum) gets ``n/a`` and a footnote saying why.

``--memory``: the training-memory planner (:mod:`kasa.perf.memory_plan`) instead of the count table::

    python -m kasa.params --memory                                         # every paper model x every method
    python -m kasa.params --memory --model llama-2-7b --methods kasa lora --quantization nf4 --gpu 24
    python -m kasa.params --memory --models perf:tiny perf:quick --methods kasa lora fft --against-bench
    python -m kasa.params --memory --models llama-2-7b --methods kasa lora --cuda-check   # on a GPU

``--against-bench`` checks each estimate against what the CPU benchmark counts (``perf:<profile>`` models);
``--cuda-check`` against ``torch.cuda.max_memory_allocated`` of real training steps.
"""

from __future__ import annotations

import argparse
import ast
import sys
import warnings
from typing import Any, Sequence

from kasa.config.presets import method_kwargs, na_footnote, presets, resolve  # noqa: F401  (kasa.cli.params.resolve stays public)
from kasa.methods import REGISTRY, build_method, methods_in_paper_order
from kasa.methods.sara import UNVERIFIED_NOTE as SARA_NOTE
from kasa.models.architectures import arch_info, arch_names, backbone_parameter_count, meta_model

# Every method DESIGN.md promises, in the paper's order; the table lists the registered ones.
ALL_METHODS = methods_in_paper_order()
# (method or preset, model) -> trainable count (head excluded) known from the paper / reference logs (KASA.md)
# or from the tables a preset reproduces (their published figure, rounded, in the comment).
REFERENCE_COUNTS: dict[tuple[str, str], int] = {
    ("kasa", "roberta-base"): 295_104,
    ("kasa", "deberta-v3-base"): 295_104,
    ("kasa", "roberta-large"): 786_816,
    ("adapter_d_roberta_base_0p3m", "roberta-base"): 304_320,  # GLUE tables: Adpt^D 0.3M
    ("adapter_d_roberta_base_0p9m", "roberta-base"): 894_528,  # Adpt^D 0.9M
    ("adapter_l_gpt2_medium_0p37m", "gpt2-medium"): 368_784,  # E2E table: Adpt^L 0.37M
    ("adapter_l_gpt2_medium_11p09m", "gpt2-medium"): 11_089_152,  # Adpt^L 11.09M
    ("adapter_l_gpt2_large_0p88m", "gpt2-large"): 875_808,  # Adpt^L 0.88M
    ("adapter_l_gpt2_large_23p00m", "gpt2-large"): 23_002_848,  # Adpt^L 23.00M
    ("vera_roberta_large", "roberta-large"): 61_440,  # VeRA 0.061M
}
PUBLISHED_TOLERANCE = 0.01
# Footnotes printed under every table that lists the method (what a count does or does not rest on).
METHOD_NOTES: dict[str, str] = {
    "adalora": "adalora: the count is at init_r (what trains at step 0); 'final' is the final budget (target_r per "
               "layer on average), the count papers report",
    "sara": SARA_NOTE,
}


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["r=32", "alpha=64.0", "target_modules=['q_proj']"]`` -> kwargs (Python literals, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got '{item}'")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def applied(method_name: str, model_name: str, sets: dict[str, Any] | None = None):
    """``(method, model)``: ``method_name`` (defaults + ``sets``) applied to the meta-device ``model_name``."""
    model = meta_model(model_name)
    registered, settings = resolve(method_name)
    method = build_method(registered, **{**settings, **method_kwargs(registered, sets or {})})
    with warnings.catch_warnings(), method.counting_only():
        warnings.simplefilter("ignore")
        method.apply(model)
    return method, model


def count(method_name: str, model_name: str, sets: dict[str, Any] | None = None,
          include_heads: bool = False) -> int:
    """Trainable parameters of ``method_name`` (defaults + ``sets``) on the meta-device ``model_name``."""
    method, model = applied(method_name, model_name, sets)
    return method.trainable_parameter_count(model, include_heads=include_heads)


def final_count(method_name: str, model_name: str, sets: dict[str, Any] | None = None) -> int | None:
    """:meth:`~kasa.methods.PeftMethod.final_parameter_count` (AdaLoRA's final budget; None for others)."""
    method, model = applied(method_name, model_name, sets)
    return method.final_parameter_count(model)


def table(methods: Sequence[str], models: Sequence[str], sets: dict[str, Any] | None = None,
          include_heads: bool = False) -> tuple[str, list[str], bool]:
    """``(markdown, notes, all_checks_ok)`` for the given methods x models."""
    notes: list[str] = []
    note_ids: dict[tuple[str, str], int] = {}  # one footnote per (method, reason), not per cell
    ok = True
    header = "| method | " + " | ".join(models) + " |"
    lines = [header, "|" + "---|" * (len(models) + 1)]
    for meth in methods:
        cells = []
        for mod in models:
            try:
                method, model = applied(meth, mod, sets)
                n = method.trainable_parameter_count(model, include_heads=include_heads)
                final = method.final_parameter_count(model)
            except Exception as e:  # noqa: BLE001  (a table cell, not a crash: say why)
                cells.append(f"n/a [{na_footnote(notes, note_ids, meth, e)}]")
                continue
            cell = f"{n:,}" + (f" (final: {final:,})" if final is not None else "")
            ref = REFERENCE_COUNTS.get((meth, mod))
            if ref is not None and not sets and not include_heads:
                good = n == ref
                ok &= good
                cell += " (paper: ok)" if good else f" (MISMATCH, paper {ref:,})"
            cells.append(cell)
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        note = METHOD_NOTES.get(meth) or METHOD_NOTES.get(resolve(meth)[0])
        if note and note not in notes:
            notes.append(note)
    totals = []
    for mod in models:
        n = sum(p.numel() for p in meta_model(mod).parameters())
        info = arch_info(mod)
        pub = info["published_params"]
        rel = backbone_parameter_count(mod) / pub - 1
        good = abs(rel) <= PUBLISHED_TOLERANCE
        ok &= good
        totals.append(f"{n:,} ({'ok' if good else 'MISMATCH'} vs published {pub / 1e6:,.1f}M, {rel:+.2%})")
    lines.append("| total (model + task head) | " + " | ".join(totals) + " |")
    return "\n".join(lines), notes, ok


class _OneLineParser(argparse.ArgumentParser):
    """Bad options: one line naming the problem (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = _OneLineParser(prog="python -m kasa.params", description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=None,
                    help="registry names or conf/method/ presets (default: every registered method)")
    ap.add_argument("--models", nargs="+", default=None,
                    help=f"shipped architectures (default: {' '.join(arch_names())})")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="hyper-parameters, passed to each method that has the field")
    ap.add_argument("--include-heads", action="store_true", help="count the task head too")
    mem = ap.add_argument_group("memory planner (--memory)")
    mem.add_argument("--memory", action="store_true", help="estimate training memory instead of counting parameters")
    mem.add_argument("--model", action="append", default=None, help="a model (repeatable; same as --models)")
    mem.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; perf:<p>: its batch)")
    mem.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 512; perf:<p>: its seq)")
    mem.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: conf/model/<model>.yaml)")
    mem.add_argument("--quantization", default=None, help="null | nf4 | int8: the frozen linear weights")
    mem.add_argument("--gradient-checkpointing", action="store_true",
                     help="only the checkpointed estimate (default: with and without)")
    mem.add_argument("--gpu", type=float, default=None, metavar="GIB", help="GPU memory: adds a fits column")
    mem.add_argument("--against-bench", action="store_true",
                     help="perf:<profile> models: estimate / bytes the CPU benchmark counts, per component")
    mem.add_argument("--cuda-check", action="store_true",
                     help="estimate vs torch.cuda.max_memory_allocated of real steps (needs CUDA)")
    args = ap.parse_args(argv)
    if args.memory:
        return memory_main(ap, args)
    used = [f"--{k.replace('_', '-')}" for k in ("model", "batch", "seq", "dtype", "quantization", "gpu")
            if getattr(args, k) is not None]
    used += [f"--{k.replace('_', '-')}" for k in ("gradient_checkpointing", "against_bench", "cuda_check")
             if getattr(args, k)]
    if used:
        ap.error(f"{' '.join(used)}: memory-planner options, give --memory too")

    methods = args.methods or _registered_methods()
    unknown = [m for m in methods if m not in REGISTRY and m not in presets()]
    models = args.models or arch_names()
    bad_models = [m for m in models if m not in arch_names()]
    if bad_models:
        ap.error(f"unknown model(s) {bad_models}; shipped: {' '.join(arch_names())}")
    skipped = [m for m in (unknown or ([] if args.methods else ALL_METHODS)) if m not in REGISTRY]
    methods = [m for m in methods if m in REGISTRY or m in presets()]

    md, notes, ok = table(methods, models, parse_sets(args.set), args.include_heads)
    print("Trainable parameters (method only, task head "
          f"{'included' if args.include_heads else 'excluded'}; each method's defaults"
          f"{' + ' + ' '.join(args.set) if args.set else ''}; models on the meta device from shipped configs)\n")
    print(md)
    if notes or skipped:
        print()
    for i, note in enumerate(notes, 1):
        print(f"[{i}] {note}")
    if skipped:
        print(f"not registered (skipped): {' '.join(skipped)}")
    from kasa.methods.export import formats

    print("\nExport formats (kasa-export --format; peft: HF PEFT folder, lora: exact plain LoRA, merged: model):")
    print("\n".join(f"  {m}: {' '.join(formats(m)) or 'none (kasa.runs.load.load_run)'}" for m in methods))
    return 0 if ok else 1


def _registered_methods() -> list[str]:
    return [m for m in ALL_METHODS if m in REGISTRY] + sorted(set(REGISTRY) - set(ALL_METHODS))


def memory_main(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--memory``: the planner's table, ``--against-bench`` or ``--cuda-check`` (see the module docstring)."""
    from kasa.perf import memory_plan as mp

    models = (args.models or []) + (args.model or []) or arch_names()
    bad = [m for m in models if m not in mp.model_names()]
    if bad:
        ap.error(f"unknown model(s) {' '.join(bad)}; choose from {' '.join(mp.model_names())}")
    methods = args.methods or _registered_methods()
    unknown = [m for m in methods if m not in REGISTRY and m not in presets()]
    if unknown:
        ap.error(f"unknown method(s) {' '.join(unknown)}; registry: {' '.join(sorted(REGISTRY))}")
    for name, value in (("--batch", args.batch), ("--seq", args.seq)):
        if value is not None and value < 1:
            ap.error(f"{name}={value}: must be at least 1")
    if args.gpu is not None and not args.gpu > 0:
        ap.error(f"--gpu={args.gpu:g}: must be a positive number of GiB")
    if args.dtype is not None and args.dtype not in mp.DTYPES:
        ap.error(f"--dtype={args.dtype}: choose one of {' '.join(mp.DTYPES)}")
    quant = None if args.quantization in (None, "null", "none") else args.quantization
    if quant is not None and quant not in mp.QUANTIZATIONS:
        ap.error(f"--quantization={args.quantization}: choose one of null {' '.join(mp.QUANTIZATIONS)}")
    if args.against_bench:
        return _against_bench(ap, models, methods)
    if args.cuda_check:
        return _cuda_check(ap, args, models, methods)
    md, notes = mp.plan_table(models, methods, args.batch, args.seq, args.dtype, quant,
                              args.gradient_checkpointing, args.gpu, parse_sets(args.set))
    print("Training memory per step, estimated on the meta device (GiB = 2^30 bytes; kasa/perf/memory_plan.py): "
          "frozen weights, trainable parameters + gradients + AdamW state, the method's buffers (+ one "
          "dequantised weight on a quantised base), activations measured without and modelled with gradient "
          "checkpointing. Not included: the CUDA context, kernel workspaces and allocator fragmentation.\n")
    print(md)
    for i, note in enumerate(notes, 1):
        print(f"[{i}] {note}")
    return 0


def _against_bench(ap: argparse.ArgumentParser, models: list[str], methods: list[str]) -> int:
    from kasa.perf import memory_plan as mp

    if any(not m.startswith(mp.PERF_PREFIX) for m in models):
        ap.error("--against-bench compares the benchmark's Llama: give --models perf:tiny perf:quick")
    worst = 0.0
    print("Planner estimate / what is measured on the real model on the CPU: per component, the bytes "
          "kasa.perf.memory.memory_row counts after one step; the totals (without, with gradient checkpointing), "
          "the peak of live tensors during a step (torch's memory profiler)\n")
    print("| model | method | " + " | ".join(mp.COMPONENTS) + " | frozen weights | counted total | total / CPU peak "
          "| total (ckpt) / CPU peak (ckpt) |")
    print("|---|---|" + "---:|" * (len(mp.COMPONENTS) + 4))
    for mod in models:
        profile = mod.removeprefix(mp.PERF_PREFIX)
        p = mp._perf_profile(mod)
        for row in mp.compare_with_bench(profile, methods):
            if "error" in row:
                print(f"| {mod} | {row['method']} | n/a: {row['error'][:150]} |" + " |" * (len(mp.COMPONENTS) + 3))
                continue
            worst = max([worst, abs(row["weights"] - 1)] + [abs(v - 1) for v in row["ratio"].values()])
            peaks = []
            for ckpt in (False, True):
                try:
                    r = mp.cpu_peak_check(mod, row["method"], p.batch, p.seq, p.dtype, checkpointing=ckpt)
                    peaks.append(f"{r['total_ratio']:.3f}")
                except Exception as exc:  # noqa: BLE001  (a cell, not a crash: say why)
                    peaks.append(f"n/a: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:80]}")
            cells = [f"{row['ratio'][c]:.4f}" for c in mp.COMPONENTS]
            print(f"| {mod} | {row['method']} | " + " | ".join(cells)
                  + f" | {row['weights']:.4f} | {row['counted']['total']:,} B | {peaks[0]} | {peaks[1]} |", flush=True)
    print(f"\nlargest deviation of a counted component from 1: {worst:.4f}")
    return 0 if worst <= 0.10 else 1


def _cuda_check(ap: argparse.ArgumentParser, args: argparse.Namespace, models: list[str], methods: list[str]) -> int:
    import torch

    from kasa.perf import memory_plan as mp

    if not torch.cuda.is_available():
        ap.error("--cuda-check needs a CUDA device")
    modes = [True] if args.gradient_checkpointing else [False, True]
    print(f"Planner estimate vs torch.cuda.max_memory_allocated ({torch.cuda.get_device_name()})\n")
    print("| model | method | dtype | batch x seq | ckpt | estimate (GiB) | CUDA peak (GiB) | estimate / peak "
          "| static estimate / allocated before the step |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    for mod in models:
        for meth in methods:
            for ckpt in modes:
                p = mp._perf_profile(mod) if mod.startswith(mp.PERF_PREFIX) else None
                b, s = args.batch or (p.batch if p else 4), args.seq or (p.seq if p else 512)
                try:
                    r = mp.cuda_check(mod, meth, b, s, args.dtype, checkpointing=ckpt)
                except Exception as exc:  # noqa: BLE001  (one row per failure, the others still run)
                    print(f"| {mod} | {meth} | | {b} x {s} | {ckpt} | failed: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0][:150]} | | | |")
                    torch.cuda.empty_cache()
                    continue
                print(f"| {mod} | {meth} | {r['dtype']} | {b} x {s} | {ckpt} | {r['estimate_total'] / mp.GIB:.3f} "
                      f"| {r['cuda_peak'] / mp.GIB:.3f} | {r['total_ratio']:.3f} | {r['static_ratio']:.3f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
