"""Every registry method (and HF PEFT's DoRA, PiSSA, AdaLoRA, VeRA) timed over the frozen floor with its counted
memory."""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics

import torch
from torch import nn

from kasa.methods import REGISTRY, build_method, methods_in_paper_order
from kasa.perf.core import (
    ALL_METHODS_TOTAL_STEPS,
    TARGETS,
    Profile,
    Runner,
    _fmt_bytes,
    build_llama,
    interleaved_raw,
    paired_ratio,
)
from kasa.perf.memory import _buffer_bytes, memory_row

# Every registry method, in the order, then HF PEFT's implementations of those peft has.
ALL_METHODS = methods_in_paper_order()


PEFT_PEERS = ["peft_dora", "peft_pissa", "peft_adalora", "peft_vera"]


def _method_kwargs(name: str, r: int, layers: int) -> dict:
    """The method's defaults, with the rank and q/k/v/up/down targets of the comparison where it has them."""
    if name == "adapter_d":  # AdapterDrop's 5 of 12 layers, scaled to the bench model's depth
        return {"drop_layers": max(1, layers * 5 // 12)}
    if name in ("fft", "bitfit") or name.startswith("adapter_"):
        return {}  # all weights / all biases / the adapters' placement presets
    if name == "adalora":
        return {"init_r": int(1.5 * r), "target_r": r, "target_modules": TARGETS,
                "total_steps": ALL_METHODS_TOTAL_STEPS}
    if name in ("vera", "sara"):
        return {"target_modules": TARGETS}  # VeRA's own r (1024), SARA's per-layer rank rule
    return {"r": r, "alpha": 2 * r, "target_modules": TARGETS}


def _build_method_runner(name: str, base: nn.Module, r: int, batch: torch.Tensor, layers: int) -> Runner:
    m = copy.deepcopy(base)
    if name.startswith("peft_"):
        from peft import AdaLoraConfig, LoraConfig, VeraConfig, get_peft_model

        kind = name.removeprefix("peft_")
        if kind == "adalora":
            cfg = AdaLoraConfig(init_r=int(1.5 * r), target_r=r, total_step=ALL_METHODS_TOTAL_STEPS,
                                target_modules=TARGETS, lora_alpha=2 * r)
        elif kind == "vera":
            cfg = VeraConfig(r=1024, target_modules=TARGETS)
        else:
            cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0,
                             use_dora=kind == "dora", init_lora_weights="pissa" if kind == "pissa" else True)
        pm = get_peft_model(m, cfg, autocast_adapter_dtype=False)
        after = (lambda step: pm.base_model.update_and_allocate(step)) if kind == "adalora" else None
        return Runner(name, pm, None, None, after_step=after)
    kw = _method_kwargs(name, r, layers)
    if "dropout" in {f.name for f in dataclasses.fields(REGISTRY[name].config_cls)}:
        kw["dropout"] = 0.0  # as the HF PEFT rows: the table compares mechanisms, not dropout (DoRA/MiLoRA: 0.05)
    method = build_method(name, **kw)
    if method.needs_calibration:  # CorDA: covariances from the benchmark batch
        method.apply(m, calibration=[{"input_ids": batch}])
    else:
        method.apply(m)
    reg = lambda: method.regularization_loss(m)  # noqa: E731 (zero for methods without one)
    return Runner(name, m, reg, None, method, hooks=True)


def bench_all_methods(p: Profile, r: int, batch: torch.Tensor) -> list[dict]:
    """Every method's training step over the frozen floor, and its counted memory, one method at a time.

    The model has attention and MLP biases (BitFit's parameters). Each method is timed interleaved with the
    floor, one method at a time (three model copies alive at most: the base to copy from, the floor and the
    method's, as a 7B GPU run needs); ratios are medians of per-repetition ratios.
    """
    import gc

    torch.manual_seed(0)
    base = build_llama(p, bias=True)
    for q in base.parameters():
        q.requires_grad_(False)
    floor = Runner("frozen", copy.deepcopy(base), None, None)
    base_buffers = _buffer_bytes(base)
    reps = max(5, p.reps // 2)
    rows = []
    for name in ALL_METHODS + PEFT_PEERS:
        torch.manual_seed(0)
        try:
            rr = _build_method_runner(name, base, r, batch, p.layers)
        except Exception as exc:  # a method that cannot run here is reported, not silently dropped
            rows.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        raw = interleaved_raw({"frozen": lambda: floor.step(batch), name: lambda rr=rr: rr.step(batch)}, reps,
                              p.warmup, p.device)
        mem = memory_row(rr, batch, p.device, base_buffers)
        rows.append({"method": name, "step": statistics.median(raw[name]), "floor": statistics.median(raw["frozen"]),
                     "over_floor": paired_ratio(raw, name, "frozen"),
                     "trainable_params": sum(q.numel() for q in rr.params), **mem})
        del rr
        gc.collect()
        if p.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def _peft_version() -> str:
    import peft

    return peft.__version__


METHOD_LABELS = {"peft_dora": "HF PEFT DoRA", "peft_pissa": "HF PEFT PiSSA", "peft_adalora": "HF PEFT AdaLoRA",
                 "peft_vera": "HF PEFT VeRA"}


def all_methods_table(p: Profile, r: int, batch: torch.Tensor) -> list[str]:
    """The Markdown section of :func:`bench_all_methods`."""
    rows = bench_all_methods(p, r, batch)
    out = ["### Every method: training step over the frozen floor, counted memory\n",
           f"The same Llama with attention and MLP biases (BitFit's parameters); each method timed interleaved "
           f"with the frozen floor ({max(5, p.reps // 2)} repetitions after {p.warmup} warm-up rounds), one method "
           f"at a time; the per-step hooks run as in training (DyLoRA's rank draw, AdaLoRA's allocation, "
           f"horizon {ALL_METHODS_TOTAL_STEPS} steps). Defaults of each method, with r = {r}, alpha = {2 * r} and "
           f"targets {', '.join(TARGETS)} where it takes them; VeRA and SARA keep their own ranks (VeRA r = 1024, "
           f"SARA's per-layer rule), dropout 0 everywhere, the adapters their placement presets (AdapterDrop "
           f"without adapters in the lowest "
           f"{max(1, p.layers * 5 // 12)} of {p.layers} layers, its 5 of 12 scaled), FFT trains everything. "
           f"HF PEFT rows: "
           f"the same settings in peft {_peft_version()}. Memory counted as in the memory table (buffers: what "
           f"the method added to the model).\n",
           "| method | step (ms) | / floor | / LoRA (ours), over floor | trainable params | buffers | memory total "
           "| / LoRA (ours) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lora = next((x for x in rows if x["method"] == "lora" and "error" not in x), None)
    for x in rows:
        label = METHOD_LABELS.get(x["method"], x["method"])
        if "error" in x:
            out.append(f"| {label} | failed: {x['error'][:120]} | | | | | | |")
            continue
        rel = (x["step"] - x["floor"]) / max(lora["step"] - lora["floor"], 1e-12) if lora else math.nan
        mem = x["total"] / lora["total"] if lora else math.nan
        out.append(f"| {label} | {x['step'] * 1e3:.1f} | {x['over_floor']:.3f} | {rel:.2f} | "
                   f"{x['trainable_params']:,} | {_fmt_bytes(x['buffers'])} | {_fmt_bytes(x['total'])} | {mem:.3f} |")
    out.append("")
    return out
