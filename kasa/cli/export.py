"""``kasa-export RUN_DIR --format {peft,lora,merged} --out DIR``: a trained adapter for use outside kasa
(:mod:`kasa.runs.export` says what each format holds)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from kasa.cli.console import report_error
from kasa.errors import KasaError
from kasa.methods.export import FORMAT_NAMES
from kasa.runs.export import export_run


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``kasa-export``."""
    ap = argparse.ArgumentParser(prog="kasa-export", description="A trained adapter for use outside kasa.")
    ap.add_argument("run_dir", help="a kasa run folder (results.json or config.yaml, checkpoints/)")
    ap.add_argument("--format", required=True, choices=FORMAT_NAMES, dest="fmt")
    ap.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    ap.add_argument("--checkpoint", choices=("best", "last"), default=None,
                    help="default: the one benchmark.selection reports (best)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ap.add_argument("--dequantize", action="store_true",
                    help="--format merged of a run on a quantised base: merge into the dequantised dense weights")
    args = ap.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.fmt, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite,
                         dequantize=args.dequantize)
    except KasaError as exc:
        return report_error("kasa-export", exc)
    print(f"[kasa] {args.fmt} export of {args.run_dir}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
