"""``kasa-report``: the paper's tables from ``results.json`` files (and, optionally, W&B runs).

The command line of :func:`kasa.analysis.report.render.report`; the package docstring says what the tables hold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kasa.analysis.report.render import COMPANIONS, RENDERERS, report
from kasa.analysis.stats import BOOTSTRAP_SEED, N_BOOTSTRAP
from kasa.cli.console import report_error
from kasa.errors import KasaError


def main(argv: list[str] | None = None) -> int:
    """The ``kasa-report`` console script; returns the exit status (2: nothing to report)."""
    p = argparse.ArgumentParser(prog="kasa-report", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", help="folders searched recursively for results.json (or the files)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of this W&B project")
    p.add_argument("--format", default="md,tex,csv", help="comma list of md, tex, csv (default: all)")
    p.add_argument("--out", help="folder for report.md/.tex/.csv (default: Markdown to stdout)")
    p.add_argument("--baseline", default="lora",
                   help="row the paired differences are taken against (default: lora; 'none': no paired tables)")
    p.add_argument("--plots", action="store_true",
                   help="also write learning curves, cost trade-offs and forest plots (PNG + PDF) to OUT/plots")
    p.add_argument("--no-wandb-images", action="store_true",
                   help="with --plots: do not log the figures to W&B even when the runs logged there")
    p.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, metavar="N",
                   help=f"bootstrap resamples for the paired intervals (default {N_BOOTSTRAP})")
    p.add_argument("--bootstrap-seed", type=int, default=BOOTSTRAP_SEED, help="numpy seed of the bootstrap")
    p.add_argument("--selection", choices=("best", "last"), default=None,
                   help="read every run at its best validation epoch or its last one (default: the epoch each run "
                        "reported, benchmark.selection); captions say which")
    a = p.parse_args(argv)
    formats = [f.strip() for f in a.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in RENDERERS]
    if bad:
        p.error(f"unknown format(s) {bad}; choose from {sorted(RENDERERS)}")
    if not a.paths and not a.wandb:
        p.error("give at least one folder or --wandb ENTITY/PROJECT")
    if a.bootstrap < 100:
        p.error(f"--bootstrap {a.bootstrap}: use at least 100 resamples")
    baseline = None if a.baseline.lower() == "none" else a.baseline
    try:
        texts = report(a.paths, a.out, formats, a.wandb, baseline=baseline, plots=a.plots,
                       wandb_images=not a.no_wandb_images, n_resamples=a.bootstrap, bootstrap_seed=a.bootstrap_seed,
                       selection=a.selection)
    except KasaError as exc:
        return report_error("kasa-report", exc)
    if a.out:
        names = [f"report.{f}" for f in formats] + [f"report_{n}" for f in formats for n in COMPANIONS.get(f, {})]
        print(f"kasa-report: wrote {', '.join(names)} to {a.out}")
        if a.plots:
            print(f"kasa-report: wrote {len(texts['plots'].splitlines())} figure file(s) to {Path(a.out) / 'plots'}")
        if texts.get("wandb"):
            print(f"kasa-report: {texts['wandb']}")
    else:
        for fmt in formats:
            print(texts[fmt])
            for name in COMPANIONS.get(fmt, {}):
                print(texts[name])
    return 0
