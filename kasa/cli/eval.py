"""``kasa-eval RUN_DIR [overrides]``: score a finished run's checkpoint again, without training
(:func:`kasa.runs.evaluate.evaluate_run` says what it does)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from kasa.cli.console import report_error
from kasa.errors import KasaError
from kasa.runs.evaluate import evaluate_run
from kasa.tasks.lm_eval import lm_eval_summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``kasa-eval``."""
    ap = argparse.ArgumentParser(prog="kasa-eval", description="Score a finished kasa run's checkpoint again, "
                                 "without training; writes eval-<name>.json beside results.json.")
    ap.add_argument("run_dir")
    ap.add_argument("overrides", nargs="*", help="Hydra-style changes of the run's config (dataset=..., a.b=value)")
    ap.add_argument("--checkpoint", choices=("best", "last"), default=None,
                    help="default: the one benchmark.selection reports (best)")
    ap.add_argument("--name", default=None, help="eval-<name>.json (default <dataset>-<checkpoint>)")
    ap.add_argument("--lm-eval", dest="lm_eval", default=None, metavar="TASKS",
                    help="comma-separated lm-evaluation-harness tasks (extra lm_eval), instead of the dev set")
    ap.add_argument("--lm-eval-include", default=None, metavar="DIR", help="a folder of your own lm_eval task YAMLs")
    ap.add_argument("--num-fewshot", type=int, default=None)
    ap.add_argument("--limit", type=float, default=None, help="examples per lm_eval task (a fraction if < 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--generation-backend", choices=("hf", "vllm"), default="hf",
                    help="dev-set generation of causal-LM runs: hf (generate) or vllm (CUDA; the merged export)")
    args = ap.parse_intermixed_args(argv)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    try:
        res = evaluate_run(args.run_dir, args.overrides, checkpoint=args.checkpoint, name=args.name,
                           lm_eval_tasks=args.lm_eval, lm_eval_include=args.lm_eval_include,
                           num_fewshot=args.num_fewshot, limit=limit, batch_size=args.batch_size,
                           generation_backend=args.generation_backend)
    except KasaError as exc:
        return report_error("kasa-eval", exc)
    shown = res.get("metrics") or lm_eval_summary(res.get("lm_eval") or {})
    print(f"[kasa] {res['checkpoint']} checkpoint (epoch {res['epoch']}) of {res['run_dir']}: "
          + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    print(f"[kasa] written: {Path(res['run_dir']) / ('eval-' + res['name'] + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
