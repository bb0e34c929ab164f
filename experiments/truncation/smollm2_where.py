"""Where KaSA's paper truncation costs LM loss on SmolLM2-135M: per module type, per layer, per token, with controls.

    OMP_NUM_THREADS=1 python experiments/truncation/smollm2_where.py --e2e PATH [--r 8] [--template describe]
        [--peft] [--out outputs/truncation_where]

Same sentences and loss as ``smollm2_lm_loss.py`` (imported from it): the mean over the first ``--n-eval``
validation sentences of the E2E text ``--e2e`` names of each sentence's mean token NLL, before any training.
docs/findings.md's numbers came from BIG-bench's ``gem/e2e_nlg`` (``--e2e`` at a BIG-bench checkout or its archive
reproduces them; no package ships it any more; other E2E text gives other sentences and numbers). Every
weight of the Llama preset targets (q, k, v, up, down projections of each layer) is decomposed once in float64;
a configuration then subtracts its removed parts from the model's weights in place, is evaluated, and the
original weights are copied back (exactly). Configurations:

* the paper's truncation (the ``t = r`` smallest triplets of W) on all targets, per module type (all layers), per
  layer (all five modules), each module alone in the ``--detail-layers`` costliest layers, and the sum of the
  single-layer costs against the all-layer cost;
* how the all-target increase spreads over (sentence, position) tokens;
* controls: the ``t`` smallest triplets of ``W diag(rms(x))`` (``truncation=activation_aware``, calibrated on the
  first ``--n-calib`` training-split sentences, none of whose MRs is evaluated), and random rank-t directions with
  the weight's own ``t`` smallest singular values (``Q_u diag(S_t) Q_v^T``, Q from the QR of a seeded Gaussian).

``--peft``: the loss after HF PEFT's KaSA (``LoraConfig(kasa_config=KasaConfig())``, whose adapter is zero at
init, so this is its base truncation alone), as a cross-check of an independent implementation.
Writes ``where.json`` and ``where.md`` under ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one thread, as every measurement here
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_lm_loss import E2E_HELP, TEMPLATES, batches, e2e_split, mean_loss, sentences  # noqa: E402

MODULES = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
POSITION_BUCKETS = ((0, 1), (1, 4), (4, 16), (16, None))  # [lo, hi) of predicted positions; None: to the end


class Removal(NamedTuple):
    """A rank-t part to subtract from one weight, in float64: ``us @ vh``; ``s`` its singular values."""

    us: torch.Tensor  # (out, t)
    vh: torch.Tensor  # (t, in)
    s: torch.Tensor  # (t,)


def target_names(model: nn.Module) -> list[str]:
    """The Linear modules KaSA's architecture preset targets (q, k, v, up, down projections for Llama)."""
    from kasa.methods import match_target, preset_targets

    targets = preset_targets(model)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and match_target(n, targets)]


def layer_of(name: str) -> int:
    """The decoder-layer index in a module name (``model.layers.7.mlp.up_proj`` -> 7)."""
    m = re.search(r"\blayers\.(\d+)\.", name)
    if m is None:
        raise ValueError(f"'{name}' has no 'layers.<i>.' in its name")
    return int(m.group(1))


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@torch.no_grad()
def smallest_removals(model: nn.Module, names: list[str], t: int) -> dict[str, Removal]:
    """KaSA's paper truncation: the ``t`` smallest singular triplets of each weight, from a float64 full SVD."""
    out = {}
    for n in names:
        U, S, Vh = torch.linalg.svd(model.get_submodule(n).weight.detach().double(), full_matrices=False)
        k = S.shape[0]
        if not 0 < t < k:
            raise ValueError(f"t={t} must be in 1..{k - 1} for '{n}' (min(out, in) = {k})")
        out[n] = Removal(U[:, k - t:] * S[k - t:], Vh[k - t:], S[k - t:].clone())
    return out


def narrow(removals: dict[str, Removal], t: int | dict[str, int]) -> dict[str, Removal]:
    """The ``t`` smallest of each weight's removed triplets (per weight when a dict; 0 leaves a weight out)."""
    out = {}
    for n, rem in removals.items():
        k = t[n] if isinstance(t, dict) else t
        if not 0 <= k <= rem.s.shape[0]:
            raise ValueError(f"cannot narrow '{n}' to {k} triplets: it holds {rem.s.shape[0]}")
        if k:
            out[n] = Removal(rem.us[:, -k:], rem.vh[-k:], rem.s[-k:])
    return out


def reference_ranks(model: nn.Module, names: list[str], t: int) -> dict[str, int]:
    """Triplets ``truncation=reference`` drops per weight (it keeps ``in - t``, so wide weights lose none)."""
    from kasa.methods.kasa import kept_components

    out = {}
    for n in names:
        o, i = model.get_submodule(n).weight.shape
        out[n] = min(o, i) - kept_components(o, i, t, "reference")
    return out


@torch.no_grad()
def activation_aware_removals(model: nn.Module, scales: dict[str, torch.Tensor], t: int) -> dict[str, Removal]:
    """``truncation=activation_aware``: the t smallest triplets of ``W diag(s)``, mapped back (kasa.methods.kasa)."""
    from kasa.methods.kasa import activation_aware_triplets

    out = {}
    for n, s in scales.items():
        w = model.get_submodule(n).weight.detach()
        us, vh = activation_aware_triplets(w[None], s[None], t, method="svd")
        out[n] = Removal(us[0], vh[0], us[0].norm(dim=0))  # singular values of W diag(s), not of W
    return out


def random_removals(reference: dict[str, Removal], seed: int) -> dict[str, Removal]:
    """Random rank-t parts with each weight's own removed singular values: ``Q_u diag(S_t) Q_v^T``, Q orthonormal."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, rem in reference.items():
        (out_f, t), in_f = rem.us.shape, rem.vh.shape[1]
        qu = torch.linalg.qr(torch.randn(out_f, t, generator=g, dtype=torch.float64))[0]
        qv = torch.linalg.qr(torch.randn(in_f, t, generator=g, dtype=torch.float64))[0]
        out[n] = Removal(qu * rem.s, qv.T, rem.s.clone())
    return out


class Surgery:
    """Subtracts removals from a model's weights in place and copies the originals back exactly."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model = model
        self.original = {n: model.get_submodule(n).weight.detach().clone() for n in names}

    @torch.no_grad()
    def apply(self, removals: dict[str, Removal]) -> None:
        """``W = W - us @ vh`` computed in float64 from the ORIGINAL W and cast back (as KaSA truncates)."""
        for n, rem in removals.items():
            w = self.model.get_submodule(n).weight
            w.copy_((self.original[n].double() - rem.us @ rem.vh).to(w.dtype))

    @torch.no_grad()
    def restore(self, names: list[str] | None = None) -> None:
        for n in self.original if names is None else names:
            self.model.get_submodule(n).weight.copy_(self.original[n])

    @contextmanager
    def removed(self, removals: dict[str, Removal]) -> Iterator[None]:
        self.apply(removals)
        try:
            yield
        finally:
            self.restore(list(removals))


def select(removals: dict[str, Removal], module: str | None = None, layer: int | None = None) -> dict[str, Removal]:
    """The removals of one module type and/or one layer."""
    return {n: r for n, r in removals.items()
            if (module is None or module_of(n) == module) and (layer is None or layer_of(n) == layer)}


@torch.no_grad()
def token_nll(model: nn.Module, tok, texts: list[str]) -> list[torch.Tensor]:
    """Per sentence, the NLL of each predicted token (position p predicts token p+1), in float64."""
    out = []
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, :-1].double()
        out.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none"))
    return out


def token_spread(before: list[torch.Tensor], after: list[torch.Tensor]) -> dict:
    """How a loss increase spreads over tokens.

    The mean loss is ``mean_s mean_p nll[s, p]``, so token (s, p) carries ``dnll[s, p] / (N L_s)`` of its change;
    ``share`` sums those per position bucket (the shares add to 1). ``rising``: fraction of tokens whose NLL rose.
    """
    if len(before) != len(after) or any(b.shape != a.shape for b, a in zip(before, after)):
        raise ValueError("token_spread: before and after must hold the same sentences")
    deltas = [a - b for b, a in zip(before, after)]
    n = len(deltas)
    total = sum(float(d.mean()) for d in deltas) / n
    tokens = sum(d.numel() for d in deltas)
    buckets = []
    for lo, hi in POSITION_BUCKETS:
        parts = [(d[lo:hi], b[lo:hi], a[lo:hi], d.numel()) for d, b, a in zip(deltas, before, after)]
        count = sum(p[0].numel() for p in parts)
        if count == 0:
            continue
        contrib = sum(float(p[0].sum()) / p[3] for p in parts) / n
        buckets.append({"positions": f"{lo}" if hi == lo + 1 else f"{lo}-{'end' if hi is None else hi - 1}",
                        "tokens": count,
                        "nll_before": sum(float(p[1].sum()) for p in parts) / count,
                        "nll_after": sum(float(p[2].sum()) for p in parts) / count,
                        "share": contrib / total if total else float("nan")})
    return {"tokens": tokens, "increase": total,
            "rising": sum(int((d > 0).sum()) for d in deltas) / tokens,
            "rising_by_more_than_1_nat": sum(int((d > 1).sum()) for d in deltas) / tokens,
            "buckets": buckets}


def markdown(res: dict) -> str:
    base = res["baseline"]

    def row(label: str, loss: float) -> str:
        return f"| {label} | {loss:.3f} | {loss - base:+.3f} |"

    head = "| truncation applied to | mean LM loss | change |\n|---|---:|---:|"
    lines = [f"Setting: {res['setting']}", "", head, row("nothing (as loaded)", base),
             row(f"all {res['n_targets']} targets, paper (t={res['t']} smallest of W)", res["paper_all"])]
    lines += [row(f"{m} only, all layers", v) for m, v in res["paper_module"].items()]
    lines += ["", "Per layer (all five modules of that layer only), change in mean LM loss:", "",
              "| layer | " + " | ".join(str(i) for i in range(10)) + " |", "|---" * 11 + "|"]
    per = list(res["paper_layer"].values())
    for start in range(0, len(per), 10):
        cells = " | ".join(f"{v - base:+.3f}" for v in per[start:start + 10])
        lines.append(f"| {start}-{min(start + 9, len(per) - 1)} | {cells} |")
    lines += ["", "Each module alone in the costliest layers (change in mean LM loss):", "",
              "| layer | " + " | ".join(MODULES) + " | all five |", "|---" * (len(MODULES) + 2) + "|"]
    lines += [f"| {i} | " + " | ".join(f"{v - base:+.3f}" for v in mods.values())
              + f" | {res['paper_layer'][i] - base:+.3f} |" for i, mods in res["paper_layer_module"].items()]
    c = res["compounding"]
    lines += ["", "| compounding | change |", "|---|---:|",
              f"| sum of the {len(per)} single-layer changes | {c['sum_single_layers']:+.3f} |",
              f"| all layers at once | {c['all_layers']:+.3f} |",
              f"| sum of the 5 single-module-type changes | {c['sum_single_modules']:+.3f} |"]
    sp = res["token_spread"]
    lines += ["", f"Token spread of the all-target paper truncation: {sp['tokens']} predicted tokens, "
              f"{100 * sp['rising']:.1f}% of them rise ({100 * sp['rising_by_more_than_1_nat']:.1f}% by more than "
              "1 nat).", "", "| predicted positions | tokens | NLL before | NLL after | share of the increase |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {b['positions']} | {b['tokens']} | {b['nll_before']:.3f} | {b['nll_after']:.3f} | "
              f"{100 * b['share']:.1f}% |" for b in sp["buckets"]]
    lines += ["", "| the paper's remedy knobs, all targets | mean LM loss | change |", "|---|---:|---:|"]
    lines += [row(f"`method.{k}`", v) for k, v in res["knobs"].items()]
    lines += [row(f"`method.truncation_rank={res['t']}` (the default, = r)", res["paper_all"]),
              row("`method.truncation=none`", base)]
    ctl = res["controls"]
    lines += ["", "| removed (t per weight, all targets unless named) | mean LM loss | change |", "|---|---:|---:|",
              row("paper: t smallest triplets of W", res["paper_all"]),
              row("activation-aware: t smallest of W diag(rms(x))", ctl["activation_aware_all"])]
    lines += [row(f"random directions, W's t smallest singular values, seed {s}", v)
              for s, v in ctl["random_all"].items()]
    lines += ["", "| one module type only, all layers | paper | activation-aware | random (seed 0) |",
              "|---|---:|---:|---:|"]
    lines += [f"| {m} | {res['paper_module'][m]:.3f} | {ctl['activation_aware_module'][m]:.3f} | "
              f"{ctl['random_module'][m]:.3f} |" for m in MODULES]
    if "peft" in res:
        p = res["peft"]
        lines += ["", f"HF PEFT {p['version']} KaSA (r={res['t']}, same targets, adapter zero at init): mean LM loss "
                  f"{p['loss']:.3f}; its truncated weights differ from W - (t smallest triplets, float64) by at most "
                  f"{p['max_rel_weight_diff']:.1e} of the weight's Frobenius norm."]
    lines += ["", f"Wall time: {res['wall_s']:.0f} s ({res['threads']} thread(s))."]
    return "\n".join(lines) + "\n"


def peft_check(model: nn.Module, tok, texts: list[str], names: list[str], reference: dict[str, Removal],
               original: dict[str, torch.Tensor], r: int) -> dict:
    """HF PEFT's KaSA on ``model`` (destructive: run last): its loss and how far its truncation is from ours."""
    import peft
    from peft import KasaConfig, LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=16, target_modules=list(MODULES), kasa_config=KasaConfig())
    pm = get_peft_model(model, cfg).eval()
    loss = mean_loss(pm, tok, texts)
    worst = 0.0
    for n in names:
        w = pm.base_model.model.get_submodule(n).get_base_layer().weight.detach().double()
        ref = original[n].double() - reference[n].us @ reference[n].vh
        worst = max(worst, float((w - ref).norm() / original[n].double().norm()))
    return {"version": peft.__version__, "loss": loss, "max_rel_weight_diff": worst}


def main() -> None:
    from kasa.methods.kasa import input_rms
    from kasa.models import load_model, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--e2e", metavar="PATH", help=E2E_HELP)
    ap.add_argument("--r", type=int, default=8, help="t = r triplets removed per weight (KaSA's default)")
    ap.add_argument("--n-eval", type=int, default=20)
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--template", choices=sorted(TEMPLATES), default="describe")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--detail-layers", type=int, default=3, help="each module alone in the N costliest layers")
    ap.add_argument("--peft", action="store_true",
                    help="also HF PEFT's KaSA (run last: it truncates the model in place)")
    ap.add_argument("--out", type=Path, default=Path("outputs/truncation_where"))
    args = ap.parse_args()
    if args.random_seeds < 1:
        ap.error(f"--random-seeds must be at least 1, got {args.random_seeds}")
    t_start = time.time()
    torch.set_grad_enabled(False)
    split = e2e_split(args.e2e)
    ev, cal = (sentences(split["validation"], args.n_eval, args.template),
               sentences(split["train"], args.n_calib, args.template, 10))
    assert not {mr for mr, _ in ev} & {mr for mr, _ in cal}  # calibrated on other sentences than the evaluated
    texts, calib = [s for _, s in ev], [s for _, s in cal]
    tok = load_tokenizer("smollm2")
    model = load_model("smollm2", task="causal_lm").eval()
    names = target_names(model)
    t = args.r

    def loss(removals: dict[str, Removal] | None = None) -> float:
        if not removals:
            return mean_loss(model, tok, texts)
        with surgery.removed(removals):
            return mean_loss(model, tok, texts)

    t0 = time.time()
    paper = smallest_removals(model, names, t)
    scales = input_rms(model, names, batches(tok, calib))
    aware = activation_aware_removals(model, scales, t)
    print(f"{len(names)} targets decomposed twice (W, W diag(rms)) in {time.time() - t0:.0f} s")
    surgery = Surgery(model, names)
    res: dict = {"setting": f"SmolLM2-135M-Instruct (offline), mean over {len(texts)} sentences (template "
                            f"'{args.template}') of each sentence's mean token NLL, t = {t} triplets per weight, "
                            f"{len(names)} targets (Llama preset), float64 decompositions",
                 "t": t, "n_targets": len(names), "n_eval": len(texts), "n_calib": len(calib),
                 "template": args.template}
    res["baseline"] = loss()
    before = token_nll(model, tok, texts)
    with surgery.removed(paper):
        res["paper_all"] = mean_loss(model, tok, texts)
        after = token_nll(model, tok, texts)
    print(f"as loaded {res['baseline']:.3f}, paper truncation on all targets {res['paper_all']:.3f}")
    res["token_nll_check"] = max(abs(sum(float(x.mean()) for x in before) / len(texts) - res["baseline"]),
                                 abs(sum(float(x.mean()) for x in after) / len(texts) - res["paper_all"]))
    res["token_spread"] = token_spread(before, after)
    res["paper_module"] = {m: loss(select(paper, module=m)) for m in MODULES}
    print("per module:", {m: round(v, 3) for m, v in res["paper_module"].items()})
    layers = sorted({layer_of(n) for n in names})
    res["paper_layer"] = {}
    for i in layers:
        res["paper_layer"][str(i)] = loss(select(paper, layer=i))
        print(f"layer {i}: {res['paper_layer'][str(i)]:.3f}", flush=True)
    base = res["baseline"]
    worst = sorted(res["paper_layer"], key=lambda i: res["paper_layer"][i], reverse=True)[:args.detail_layers]
    res["paper_layer_module"] = {i: {m: loss(select(paper, module=m, layer=int(i))) for m in MODULES}
                                 for i in sorted(worst, key=int)}
    res["compounding"] = {"sum_single_layers": sum(v - base for v in res["paper_layer"].values()),
                          "all_layers": res["paper_all"] - base,
                          "sum_single_modules": sum(v - base for v in res["paper_module"].values())}
    res["knobs"] = {f"truncation_rank={k}": loss(narrow(paper, k)) for k in (1, 2, 4) if k < t}
    res["knobs"]["truncation=reference"] = loss(narrow(paper, reference_ranks(model, names, t)))
    randoms = {s: random_removals(paper, s) for s in range(args.random_seeds)}
    res["controls"] = {"activation_aware_all": loss(aware),
                       "random_all": {str(s): loss(r) for s, r in randoms.items()},
                       "activation_aware_module": {m: loss(select(aware, module=m)) for m in MODULES},
                       "random_module": {m: loss(select(randoms[0], module=m)) for m in MODULES}}
    for n, p in surgery.original.items():  # every configuration was undone exactly
        assert torch.equal(model.get_submodule(n).weight, p), n
    if args.peft:
        res["peft"] = peft_check(model, tok, texts, names, paper, surgery.original, t)
    res["threads"] = torch.get_num_threads()
    res["wall_s"] = time.time() - t_start
    md = markdown(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "where.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "where.md").write_text(md)
    print(md)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
