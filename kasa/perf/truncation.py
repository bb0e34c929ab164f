"""KaSA's truncation of 7B-shaped weights: full SVD against the fast path, per weight and for a whole model."""

from __future__ import annotations

import math
import statistics
import time

import torch

from kasa.methods import build_method
from kasa.methods.svd import batched_smallest_triplets
from kasa.methods.truncation_cache import weight_fingerprint
from kasa.perf.core import TARGETS, Profile, _sync, build_llama


def bench_truncation(p: Profile, r: int) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for shape in p.trunc_shapes:
        w = (torch.randn(*shape, generator=g) / math.sqrt(shape[1])).to(device=p.device, dtype=p.dtype)
        t_svd, t_fast, t_fp = [], [], []
        for _ in range(p.trunc_reps):  # alternate, so a load spike from elsewhere hits both
            _sync(p.device)
            t0 = time.perf_counter()
            U, S, Vh = torch.linalg.svd(w.float(), full_matrices=False)
            ref = (U[:, -r:] * S[-r:]) @ Vh[-r:]
            _sync(p.device)
            t_svd.append(time.perf_counter() - t0)
            del U, Vh
            t0 = time.perf_counter()
            u, s, vh, used = batched_smallest_triplets(w[None], r, torch.float32, "auto")
            fast = (u[0] * s[0]) @ vh[0]
            _sync(p.device)
            t_fast.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            weight_fingerprint(w)
            t_fp.append(time.perf_counter() - t0)
        wd = w.double()
        rel = float(((wd - fast.double()) - (wd - ref.double())).norm() / (wd - ref.double()).norm())
        rows.append({"shape": shape, "svd": statistics.median(t_svd), "fast": statistics.median(t_fast),
                     "fingerprint": statistics.median(t_fp), "used": used[0], "rel_diff": rel})
    if p.device.startswith("cuda") and p.trunc_shapes:  # one batched call for 4 same-shaped weights
        shape = p.trunc_shapes[0]
        ws = torch.randn(4, *shape, device=p.device, dtype=p.dtype) / math.sqrt(shape[1])
        _sync(p.device)
        t0 = time.perf_counter()
        batched_smallest_triplets(ws, r, torch.float32, "auto")
        _sync(p.device)
        rows.append({"shape": (4, *shape), "svd": float("nan"), "fast": (time.perf_counter() - t0) / 4,
                     "fingerprint": float("nan"), "used": "batched x4", "rel_diff": float("nan")})
    return rows


def bench_truncation_model(p: Profile, r: int) -> dict[str, float]:
    """Wall time of KaSA's whole truncation: ``method.apply`` on a model of ``p.trunc_model_layers`` decoder
    layers (the issue's 7B target: LLaMA-2-7B shape, 32 layers, q/k/v/up/down), fast path, no cache."""
    import gc

    torch.manual_seed(0)
    model = build_llama(p, layers=p.trunc_model_layers)
    for q in model.parameters():
        q.requires_grad_(False)
    method = build_method("kasa", r=r, alpha=2 * r, target_modules=TARGETS, svd_method="auto")
    n = sum(1 for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in TARGETS)
    _sync(p.device)
    t0 = time.perf_counter()
    method.apply(model)
    _sync(p.device)
    secs = time.perf_counter() - t0
    del model
    gc.collect()
    if p.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"layers": p.trunc_model_layers, "weights": n, "seconds": secs}
