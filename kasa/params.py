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
:func:`kasa.methods.base.count_only`, so one whose initialisation needs values (calibration data) may
skip it. A method that still cannot be applied on the meta device (e.g. a rank that depends on the
pretrained spectrum) gets ``n/a`` and a footnote saying why.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import functools
import sys
import warnings
from typing import Any, Sequence

from .methods import REGISTRY, build_method
from .methods.base import count_only
from .models.architectures import arch_info, arch_names, backbone_parameter_count, meta_model

# Every method DESIGN.md promises, in the paper's order; the table lists the registered ones.
ALL_METHODS = ["fft", "bitfit", "adapter_h", "adapter_p", "adapter_l", "adapter_d", "lora", "adalora", "dylora",
               "vera", "sara", "pissa", "milora", "dora", "corda", "kasa"]
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
    "sara": "sara: rank rule unverified (no primary text of arXiv 2408.03290 was reachable; kasa/methods/sara.py "
            "writes out the rule implemented)",
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


def presets() -> list[str]:
    """The presets of ``conf/method/``: yaml files that are not a registry name (each extends a method)."""
    from .train import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml") if p.stem not in REGISTRY)


@functools.cache
def _composed(name: str) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from .train import CONF_DIR  # importing kasa.train registers the methods' structured configs

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="kasa.params"):
        return OmegaConf.to_container(compose("train", overrides=[f"method={name}"]).method, resolve=True)


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """``(registry name, settings)`` that ``kasa-train method=<name>`` composes: a registry name gives its
    dataclass defaults, a ``conf/method/`` preset the method it extends with the preset's values."""
    if name not in REGISTRY and name not in presets():
        raise ValueError(f"unknown method or preset '{name}'; registry: {' '.join(sorted(REGISTRY))}; "
                         f"presets: {' '.join(presets())}")
    cfg = copy.deepcopy(_composed(name))  # cached: one composition per name
    return cfg.pop("name"), cfg


def method_kwargs(name: str, sets: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``sets`` that method ``name`` accepts."""
    fields = {f.name for f in dataclasses.fields(REGISTRY[name].config_cls)}
    return {k: v for k, v in sets.items() if k in fields}


def applied(method_name: str, model_name: str, sets: dict[str, Any] | None = None):
    """``(method, model)``: ``method_name`` (defaults + ``sets``) applied to the meta-device ``model_name``."""
    model = meta_model(model_name)
    registered, settings = resolve(method_name)
    method = build_method(registered, **{**settings, **method_kwargs(registered, sets or {})})
    with warnings.catch_warnings(), count_only():
        warnings.simplefilter("ignore")
        method.apply(model)
    return method, model


def count(method_name: str, model_name: str, sets: dict[str, Any] | None = None,
          include_heads: bool = False) -> int:
    """Trainable parameters of ``method_name`` (defaults + ``sets``) on the meta-device ``model_name``."""
    method, model = applied(method_name, model_name, sets)
    return method.trainable_parameter_count(model, include_heads=include_heads)


def final_count(method_name: str, model_name: str, sets: dict[str, Any] | None = None) -> int | None:
    """:meth:`~kasa.methods.base.PeftMethod.final_parameter_count` (AdaLoRA's final budget; None for others)."""
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
                reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
                key = (meth, reason)
                if key not in note_ids:
                    notes.append(f"{meth}: n/a ({reason})")
                    note_ids[key] = len(notes)
                cells.append(f"n/a [{note_ids[key]}]")
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kasa.params", description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=None,
                    help="registry names or conf/method/ presets (default: every registered method)")
    ap.add_argument("--models", nargs="+", default=None, help=f"shipped architectures (default: {' '.join(arch_names())})")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="hyper-parameters, passed to each method that has the field")
    ap.add_argument("--include-heads", action="store_true", help="count the task head too")
    args = ap.parse_args(argv)

    registered = [m for m in ALL_METHODS if m in REGISTRY] + sorted(set(REGISTRY) - set(ALL_METHODS))
    methods = args.methods or registered
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
    from .methods.export import formats

    print("\nExport formats (kasa-export --format; peft: HF PEFT folder, lora: exact plain LoRA, merged: model):")
    print("\n".join(f"  {m}: {' '.join(formats(m)) or 'none (kasa.runs_io.load_run)'}" for m in methods))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
