"""SmolLM2-135M before training on a quantised base: mean LM loss over docs/findings.md's 20 sentences.

    python experiments/quantization/smollm2_lm_loss.py --e2e PATH

The sentences are ``experiments/truncation/smollm2_lm_loss.py``'s (the first 20 validation MRs of the E2E text
``--e2e`` names, "describe" template). docs/findings.md's numbers came from BIG-bench's ``gem/e2e_nlg``: ``--e2e``
at a BIG-bench checkout's ``bigbench/benchmark_tasks`` or ``bigbench-1.0.0.tar.gz`` reproduces them; no package
ships it any more, and other E2E text (the E2E release's folder, the hub's ``tuetschek/e2e_nlg``) gives other
numbers. float32 as loaded, then for NF4 and int8 (torchao, ``kasa.models.quantize``): LoRA at init (the quantised base
alone: B = 0), KaSA at init (the paper's truncation at full precision, then the residual quantised) and KaSA with
``truncation=none`` (quantised base, zero update: equal to LoRA's). docs/findings.md has the numbers.
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "truncation"))
from smollm2_lm_loss import E2E_HELP, e2e_split, mean_loss, sentences  # noqa: E402

from kasa.methods import build_method  # noqa: E402
from kasa.models import load_model, load_tokenizer  # noqa: E402
from kasa.models.quantize import quantize_for_method  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--e2e", metavar="PATH", help=E2E_HELP)
args = ap.parse_args()
torch.set_grad_enabled(False)
split = e2e_split(args.e2e)
ev = [s for _, s in sentences(split["validation"], 20, "describe")]
tok = load_tokenizer("smollm2")
base = load_model("smollm2", task="causal_lm").eval()
print(f"float32 as loaded: {mean_loss(base, tok, ev):.3f}")
for scheme in ("nf4", "int8"):
    for name, kw in (("lora", {}), ("kasa", {}), ("kasa", {"truncation": "none"})):
        t0 = time.time()
        m = copy.deepcopy(base)
        meth = build_method(name, r=8, **kw)
        quantize_for_method(m, meth, scheme, "torchao", stage="before")
        meth.apply(m)
        quantize_for_method(m, meth, scheme, "torchao", stage="after")
        print(f"{scheme} {name} {kw}: {mean_loss(m, tok, ev):.3f} ({time.time() - t0:.0f} s)")
