"""LM loss of SmolLM2-135M before any training: as loaded, after KaSA's paper truncation, after the activation-aware one.

    python experiments/truncation/smollm2_lm_loss.py [--r 8] [--n-eval 20] [--n-calib 64] [--template arrow]

Evaluated on the first ``--n-eval`` validation MRs of BIG-bench ``gem/e2e_nlg`` (kasa's MR-grouped split, seed 0)
with their first reference, written with ``--template``: ``describe`` (default, the sentence of docs/findings.md's
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
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


TEMPLATES = {"describe": "There is a restaurant with the following attributes: {mr}. Describe the restaurant: {ref}",
             "arrow": "{mr} -> {ref}"}


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
    from kasa.eval.e2e import load_e2e_bigbench
    from kasa.methods import build_method
    from kasa.models import load_model, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=20)
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--template", choices=sorted(TEMPLATES), default="describe")
    ap.add_argument("--truncations", nargs="+", default=["paper", "activation_aware"])
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    split = load_e2e_bigbench()
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
