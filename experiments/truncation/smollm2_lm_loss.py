"""LM loss of SmolLM2-135M before any training: as loaded, after KaSA's paper truncation, after the activation-aware
one.

    python experiments/truncation/smollm2_lm_loss.py --e2e PATH [--r 8] [--n-eval 20] [--n-calib 64]
        [--template arrow]

Evaluated on the first ``--n-eval`` validation MRs of the E2E text that ``--e2e`` names (:func:`e2e_split`) with
their first reference. docs/findings.md's numbers came from BIG-bench's ``gem/e2e_nlg`` (kasa's MR-grouped split,
seed 0): ``--e2e`` pointing at a BIG-bench checkout's ``bigbench/benchmark_tasks`` or ``bigbench-1.0.0.tar.gz``
reproduces them; no package on the index ships BIG-bench's task data or E2E any more, so other E2E text (the
original release's folder, or the hub's ``tuetschek/e2e_nlg``) gives other sentences and other numbers. Sentences
are written with ``--template``: ``describe`` (default, the sentence of docs/findings.md's
first measurement: "There is a restaurant with the following attributes: <MR>. Describe the restaurant: <ref>")
or ``arrow`` (the e2e benchmark's "<MR> -> <ref>"); the loss is each sentence's mean token NLL, averaged over the
sentences. ``truncation=activation_aware`` is calibrated on OTHER
sentences: the first ``--n-calib`` (MR, reference) pairs of the training split (no MR in both). KaSA on the Llama
preset targets (q, k, v, up, down projections); docs/findings.md has the numbers.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


TEMPLATES = {"describe": "There is a restaurant with the following attributes: {mr}. Describe the restaurant: {ref}",
             "arrow": "{mr} -> {ref}"}


E2E_HELP = ("E2E text: a BIG-bench checkout's bigbench/benchmark_tasks folder or bigbench-1.0.0.tar.gz (the "
            "gem/e2e_nlg task docs/findings.md measured, split by MR with seed 0), or a folder of the E2E release's "
            "trainset.csv "
            "and devset.csv (github.com/tuetschek/e2e-dataset); default: $KASA_BIGBENCH, else the hub's "
            "tuetschek/e2e_nlg")


def e2e_split(path: str | None) -> dict:
    """``{"train": {mr: refs}, "validation": {mr: refs}}`` from ``path`` (see :data:`E2E_HELP`); when none can be
    read, the program stops with one line naming ``--e2e``."""
    from kasa.assets import MissingAssetError
    from kasa.tasks.classification.data import DatasetError
    from kasa.tasks.e2e.metrics import load_e2e_bigbench, load_e2e_nlg

    where = path or os.environ.get("KASA_BIGBENCH")
    try:
        if where and (Path(where).is_file() or (Path(where) / "gem" / "e2e_nlg" / "task.json").is_file()):
            return load_e2e_bigbench(path=where)
        return load_e2e_nlg(path or "tuetschek/e2e_nlg", splits=["train", "validation"])
    except (DatasetError, MissingAssetError, OSError) as exc:
        sys.exit(f"{Path(sys.argv[0]).name}: no E2E text ({' '.join(str(exc).split())[:300]}); pass --e2e PATH: "
                 + E2E_HELP)


def sentences(split: dict, n: int, template: str, per_mr: int = 1) -> list[tuple[str, str]]:
    """``(MR, sentence)`` pairs: the first ``n`` of up to ``per_mr`` references per MR."""
    out = [(mr, TEMPLATES[template].format(mr=mr, ref=ref)) for mr, refs in split.items() for ref in refs[:per_mr]]
    return out[:n]


@torch.no_grad()
def mean_loss(model, tok, texts: list[str]) -> float:
    losses = []
    for t in texts:
        x = tok(t, return_tensors="pt")
        losses.append(model(**x, labels=x["input_ids"]).loss.item())
    return sum(losses) / len(losses)


def batches(tok, texts: list[str], size: int = 8):
    for i in range(0, len(texts), size):
        yield dict(tok(texts[i:i + size], return_tensors="pt", padding=True))


def main() -> None:
    from kasa.methods import build_method
    from kasa.models import load_model, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--e2e", metavar="PATH", help=E2E_HELP)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=20)
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--template", choices=sorted(TEMPLATES), default="describe")
    ap.add_argument("--truncations", nargs="+", default=["paper", "activation_aware"])
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    split = e2e_split(args.e2e)
    ev, cal = sentences(split["validation"], args.n_eval, args.template), sentences(split["train"], args.n_calib,
                                                                                   args.template, 10)
    assert not {mr for mr, _ in ev} & {mr for mr, _ in cal}  # calibrated on other sentences than the evaluated
    evaluated, calib = [s for _, s in ev], [s for _, s in cal]
    tok = load_tokenizer("smollm2")
    base = load_model("smollm2", task="causal_lm").eval()
    print(f"{len(evaluated)} evaluated sentences, {len(calib)} calibration sentences (other MRs)")
    print(f"as loaded: {mean_loss(base, tok, evaluated):.3f}")
    for tr in args.truncations:
        t0 = time.time()
        model = copy.deepcopy(base)
        method = build_method("kasa", r=args.r, truncation=tr)
        method.apply(model, calibration=batches(tok, calib) if method.needs_calibration else None)
        print(f"truncation={tr} (r={args.r}): {mean_loss(model, tok, evaluated):.3f}  "
              f"(apply {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
