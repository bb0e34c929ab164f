"""Side-by-side cost of KaSA against LoRA, HF PEFT's LoRA/KaSA and the frozen model, in ONE process.

``python -m kasa.bench --quick`` (CPU, a few minutes), ``--full`` (GPU: 7B-shaped Llama built from its
config on the device, bf16), ``--tiny`` (seconds; what the tests run). Prints Markdown tables:

1. training step (forward + backward + AdamW step) of every method, median of interleaved repetitions
   (each repetition runs every method once, in a rotated order), and its ratio to the frozen floor
   (forward + backward to the inputs of the frozen model, no optimizer);
2. memory: on CUDA the peak allocated during a step; everywhere the bytes we can count honestly:
   trainable parameters + their gradients + AdamW state + adapter buffers + activations saved for
   backward (counted with ``torch.autograd.graph.saved_tensors_hooks``, frozen weights excluded);
3. merged inference (forward, no grad) against the base model;
4. the regulariser's forward + backward (paper form, reference form through r x r Grams, reference
   form built explicitly, HF PEFT's);
5. truncation of 7B-shaped weights: full SVD (float32, the previous default and HF PEFT's) against
   the fast path (``svd_method="auto"``), per weight, and an extrapolation to LLaMA-2 7B's targets;
6. every registry method (and HF PEFT's DoRA, PiSSA, AdaLoRA, VeRA) over the frozen floor, with its
   counted memory, one method at a time (``--skip-methods`` leaves it out);
7. Lightning's training step (``kasa.module.PeftModule``) against a bare PyTorch loop.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import math
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .methods import REGISTRY, build_method
from .methods.kasa import KasaLayer, _batched_l2, _batched_l3
from .methods.svd import batched_smallest_triplets
from .methods.truncation_cache import weight_fingerprint

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


@dataclass
class Profile:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    batch: int
    seq: int
    reps: int
    warmup: int
    trunc_shapes: list[tuple[int, int]]
    trunc_reps: int
    dtype: torch.dtype
    device: str
    lightning_steps: int
    # CPU threads for the step timings (None: torch's default). One thread on a shared 2-core machine:
    # with two, another process preempting one OpenMP thread stalls every parallel region (seen: 15x
    # spikes), one thread only slows down in proportion. Truncation's large LAPACK calls use `trunc_threads`.
    threads: int | None = None
    trunc_threads: int | None = None
    # Decoder layers of the model whose whole KaSA truncation (`method.apply`, q/k/v/up/down) is timed end to
    # end; None skips it (a 7B-shaped model on a 2-core CPU takes ~12 min: the quick profile extrapolates).
    trunc_model_layers: int | None = None


PROFILES = {
    "tiny": Profile("tiny", 32, 48, 2, 4, 100, 2, 8, 3, 1, [(64, 64), (64, 172)], 1, torch.float32, "cpu", 3, 1, 1,
                    trunc_model_layers=2),
    "quick": Profile("quick", 512, 1376, 4, 8, 2048, 4, 64, 25, 2, [(4096, 4096), (4096, 11008)], 1,
                     torch.float32, "cpu", 6, 1, 2),
    # 7B-shaped layers; 8 of LLaMA-2 7B's 32 by default so five model copies and HF PEFT's per-weight float32
    # SVDs fit a short GPU slot (`--layers 32` for the full depth).
    "full": Profile("full", 4096, 11008, 8, 32, 32000, 4, 512, 9, 2, [(4096, 4096), (4096, 11008), (11008, 4096)],
                    3, torch.bfloat16, "cuda", 10, trunc_model_layers=32),
}
# LLaMA-2 7B targets (q, k, v, up, down) x 32 layers, for the truncation extrapolation.
LLAMA7B_TARGET_SHAPES = {(4096, 4096): 96, (11008, 4096): 32, (4096, 11008): 32}


# ----------------------------------------------------------------------------------------------------
def build_llama(p: Profile, layers: int | None = None, bias: bool = False) -> nn.Module:
    """The profile's Llama from its config, on the device in its dtype; ``bias`` adds attention and MLP biases
    (so BitFit has something to train in the all-methods table)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=p.vocab, hidden_size=p.hidden, intermediate_size=p.intermediate,
                      num_hidden_layers=layers or p.layers, num_attention_heads=p.heads,
                      num_key_value_heads=p.heads, max_position_embeddings=max(64, p.seq),
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, attention_bias=bias, mlp_bias=bias)
    with torch.device(p.device):  # built on the device in its dtype: a 7B float32 detour would not fit
        model = LlamaForCausalLM._from_config(cfg, dtype=p.dtype)
    return model.train()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _clone(model: nn.Module, share_targets: bool) -> nn.Module:
    """A copy that shares the frozen parameters with ``model`` (all of them when ``share_targets``,
    else all but the targeted weights, which KaSA truncates in place)."""
    memo = {}
    for n, prm in model.named_parameters():
        targeted = any(n.endswith(f"{t}.weight") for t in TARGETS)
        if share_targets or not targeted:
            memo[id(prm)] = prm
    return copy.deepcopy(model, memo)


class Runner:
    """One method on one model: its training step, its merged forward, its regulariser."""

    def __init__(self, name: str, model: nn.Module, reg: Callable[[], torch.Tensor] | None,
                 merge: Callable[[], None] | None, method=None, after_step: Callable[[int], None] | None = None,
                 hooks: bool = False):
        self.name, self.model, self.reg, self.merge_fn, self.method = name, model, reg, merge, method
        # hooks: call the method's per-step hooks as the training loop does (DyLoRA's rank draw before the
        # forward, AdaLoRA's importance update and rank allocation after the optimizer step)
        self.hooks, self.after_step, self.steps = hooks, after_step, 0
        params = [q for q in model.parameters() if q.requires_grad]
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=1e-5) if params else None
        if not params:  # the floor: backward through every layer down to the embeddings
            model.enable_input_require_grads()

    def step(self, batch: torch.Tensor, with_reg: bool = True) -> None:
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
        if self.hooks:
            self.method.on_before_forward(self.model, self.steps)
        loss = self.model(input_ids=batch, labels=batch).loss
        if self.reg is not None and with_reg:
            loss = loss + self.reg()
        loss.backward()
        if self.opt is not None:
            self.opt.step()
        if self.hooks:
            self.method.on_train_step(self.model, self.steps, ALL_METHODS_TOTAL_STEPS)
        if self.after_step is not None:
            self.after_step(self.steps)
        self.steps += 1

    @torch.no_grad()
    def infer(self, batch: torch.Tensor) -> None:
        self.model(input_ids=batch)


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int, device: str) -> dict[str, float]:
    """Median seconds per call; every repetition runs every function once, in a rotated order."""
    return {n: statistics.median(v) for n, v in interleaved_raw(fns, reps, warmup, device).items()}


def interleaved_raw(fns: dict[str, Callable[[], None]], reps: int, warmup: int, device: str
                    ) -> dict[str, list[float]]:
    """Seconds of every call, repetition by repetition (index i of every list: repetition i)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(reps):
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repetitions of ``a``'s time / ``b``'s time in the same repetition: load that drifts
    on the scale of a repetition cancels, which plain ratios of medians do not."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def saved_activation_bytes(runner: Runner, batch: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward, frozen weights excluded."""
    def storage(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    frozen = {storage(q) for q in runner.model.parameters()} | {storage(b) for b in runner.model.buffers()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor):
        # Each storage once (views such as a transpose share it), at its full size: what memory holds.
        nonlocal total
        key = storage(t)
        if key not in frozen and key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = runner.model(input_ids=batch, labels=batch).loss
        if runner.reg is not None:
            loss = loss + runner.reg()
    del loss
    return total


def _buffer_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def memory_row(runner: Runner, batch: torch.Tensor, device: str, base_buffers: int) -> dict[str, float]:
    """Counted bytes of one training step; ``buffers``: what the method added to the model (all its buffers
    minus ``base_buffers``, the frozen model's own: KaSA's removed factors, VeRA's shared matrices, ...)."""
    trainable = sum(q.numel() * q.element_size() for q in runner.params)
    opt_state = 0
    if runner.opt is not None:
        for st in runner.opt.state.values():
            opt_state += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    buffers = max(0, _buffer_bytes(runner.model) - base_buffers)
    acts = saved_activation_bytes(runner, batch)
    row = {"trainable": trainable, "grads": trainable, "adamw": opt_state, "buffers": buffers, "saved": acts}
    row["total"] = sum(row.values())
    if device.startswith("cuda"):
        runner.opt and runner.opt.zero_grad(set_to_none=True)
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        runner.step(batch)
        _sync(device)
        row["cuda_peak_step"] = torch.cuda.max_memory_allocated() - before
    return row


# ----------------------------------------------------------------------------------------------------
def build_runners(p: Profile, r: int, beta: float, gamma: float, regularizer: str = "paper"
                  ) -> tuple[dict[str, Runner], nn.Module]:
    from peft import KasaConfig as PeftKasaConfig
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(0)
    base = build_llama(p)
    for q in base.parameters():
        q.requires_grad_(False)
    share = p.device.startswith("cuda")  # 7B: one copy of the frozen weights for the non-truncating methods
    runners: dict[str, Runner] = {}

    lora_m = _clone(base, share)
    lora = build_method("lora", r=r, alpha=2 * r, target_modules=TARGETS)
    lora.apply(lora_m)
    runners["lora"] = Runner("lora", lora_m, None, lambda: lora.merge(lora_m), lora)

    kasa_m = _clone(base, False)
    kasa = build_method("kasa", r=r, alpha=2 * r, target_modules=TARGETS, beta=beta, gamma=gamma,
                        regularizer=regularizer)
    kasa.apply(kasa_m)
    runners["kasa"] = Runner("kasa", kasa_m, lambda: kasa.regularization_loss(kasa_m), lambda: kasa.merge(kasa_m),
                             kasa)

    # adapters in the model's dtype, as ours (peft would otherwise upcast bf16 adapters to float32)
    plm = get_peft_model(_clone(base, share), PeftLoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS,
                                                             lora_dropout=0.0), autocast_adapter_dtype=False)
    runners["peft_lora"] = Runner("peft_lora", plm, None, plm.merge_adapter)

    pkm = get_peft_model(_clone(base, False),
                         PeftLoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0,
                                        kasa_config=PeftKasaConfig(beta=beta, gamma=gamma)),
                         autocast_adapter_dtype=False)
    runners["peft_kasa"] = Runner("peft_kasa", pkm, pkm.base_model._get_kasa_loss, pkm.merge_adapter)
    # Last: its input-grad hook on the embeddings must not be deep-copied into the other models.
    runners = {"frozen": Runner("frozen", base, None, None), **runners}
    return runners, base


def build_kasa_keeping_removed(p: Profile, r: int, beta: float, gamma: float) -> Runner:
    """KaSA with ``keep_removed=true`` (removed-factor buffers for export) on a fresh copy, for the memory table."""
    torch.manual_seed(0)
    base = build_llama(p)
    for q in base.parameters():
        q.requires_grad_(False)
    m = build_method("kasa", r=r, alpha=2 * r, target_modules=TARGETS, beta=beta, gamma=gamma, keep_removed=True)
    m.apply(base)
    return Runner("kasa_keep", base, lambda: m.regularization_loss(base), lambda: m.merge(base), m)


def bench_steps(p: Profile, runners: dict[str, Runner], batch: torch.Tensor) -> dict[str, list[float]]:
    fns = {n: (lambda rr=rr: rr.step(batch)) for n, rr in runners.items()}
    # the same KaSA model and optimizer without the regulariser: isolates the regulariser's in-step cost
    fns["kasa_noreg"] = lambda: runners["kasa"].step(batch, with_reg=False)
    return interleaved_raw(fns, p.reps, p.warmup, p.device)


def bench_regularisers(p: Profile, kasa_runner: Runner, peft_runner: Runner, batch: torch.Tensor
                       ) -> dict[str, float]:
    model, method = kasa_runner.model, kasa_runner.method
    layers = [m for m in model.modules() if isinstance(m, KasaLayer)]

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def go() -> None:
            fn().backward()
            for q in kasa_runner.params + peft_runner.params:
                q.grad = None
        return go

    def explicit_reference() -> torch.Tensor:  # what the reference main.py builds: in x in and out x out
        total = 0.0
        for m in layers:
            A, B = m.lora_A.float(), m.lora_B.float()
            total = total + torch.linalg.norm(A.T @ A - torch.eye(A.shape[1], device=A.device)) + \
                torch.linalg.norm(B @ B.T - torch.eye(B.shape[0], device=B.device))
        return total

    c = method.config
    fns = {
        "ours paper (r x r, batched over same shapes: what training uses)":
            run(lambda: method.regularization_loss(model)),
        "ours paper, per-layer loop (before batching)":
            run(lambda: sum(c.beta * m.l2() + c.gamma * m.l3_paper() for m in layers)),
        "ours reference (batched, via r x r Grams)":
            run(lambda: (c.beta * _batched_l2(layers) + c.gamma * _batched_l3(layers, "reference")) / len(layers)),
        "peft _get_kasa_loss (paper)": run(peft_runner.reg),
    }
    if not p.device.startswith("cuda"):  # the explicit 11008 x 11008 Grams of every layer would not fit a 7B run
        fns["reference built explicitly (in x in, out x out)"] = run(explicit_reference)
    fns["step"] = lambda: kasa_runner.step(batch)  # the denominator, timed in the same interleaving
    return interleaved(fns, p.reps, p.warmup, p.device)


# Every registry method, in the issue's order, then HF PEFT's implementations of those peft has.
ALL_METHODS = ["fft", "bitfit", "adapter_h", "adapter_p", "adapter_l", "adapter_d", "lora", "adalora", "dylora",
               "vera", "sara", "pissa", "milora", "dora", "corda", "kasa"]
PEFT_PEERS = ["peft_dora", "peft_pissa", "peft_adalora", "peft_vera"]
ALL_METHODS_TOTAL_STEPS = 1000  # AdaLoRA's budget schedule horizon in the bench (allocation every deltaT)


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
    if getattr(method, "needs_calibration", False):  # CorDA: covariances from the benchmark batch
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


def bench_merged(p: Profile, runners: dict[str, Runner], batch: torch.Tensor) -> dict[str, float]:
    for n, rr in runners.items():
        if rr.merge_fn is not None:
            rr.merge_fn()
    fns = {n: (lambda rr=rr: rr.infer(batch)) for n, rr in runners.items()}
    kasa_runner = runners.get("kasa")
    if kasa_runner is not None and kasa_runner.method is not None:
        # merge_and_unload: the wrappers go, the plain architecture stays (no per-layer wrapper call)
        plain = copy.deepcopy(kasa_runner.model)
        kasa_runner.method.merge_and_unload(plain)
        fns["kasa_unloaded"] = lambda: plain(input_ids=batch)
    return interleaved(fns, p.reps, p.warmup, p.device)


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


def bench_lightning(p: Profile, r: int) -> dict[str, float] | None:
    """Median step of PeftModule under a Lightning Trainer vs a bare loop, same model and batch."""
    try:
        import lightning as L

        from .module import OptimConfig, PeftModule
    except ImportError:
        return None
    torch.manual_seed(0)
    model = build_llama(p)
    method = build_method("kasa", r=r, alpha=2 * r, target_modules=TARGETS)
    method.apply(model)
    batch = torch.randint(0, p.vocab, (p.batch, p.seq), generator=torch.Generator().manual_seed(1)).to(p.device)
    # every loader batch is `batch` itself: the same rows, in order, for each step
    data = [{"input_ids": batch[i], "labels": batch[i]} for i in range(p.batch)] * (p.lightning_steps + 1)
    module = PeftModule(model, method, num_labels=2, metrics=["accuracy"], optim=OptimConfig(scheduler="constant"))

    times: dict[str, list[float]] = {"lightning": [], "bare": []}

    class Timer(L.Callback):
        def on_train_batch_start(self, *a, **k) -> None:
            _sync(p.device)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *a, **k) -> None:
            _sync(p.device)
            times["lightning"].append(time.perf_counter() - self.t0)

    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=4e-4)

    def bare() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=batch, labels=batch).loss + method.regularization_loss(model)
        loss.backward()
        opt.step()

    loader = torch.utils.data.DataLoader(data, batch_size=p.batch)
    rounds = 3
    for _ in range(rounds):  # alternate Trainer runs and bare loops; drop each Trainer run's first step
        n0 = len(times["lightning"])
        trainer = L.Trainer(max_steps=p.lightning_steps + 1, accelerator="gpu" if p.device == "cuda" else "cpu",
                            devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                            callbacks=[Timer()], precision="bf16-true" if p.dtype == torch.bfloat16 else "32-true")
        with contextlib.redirect_stdout(None):
            trainer.fit(module, train_dataloaders=loader)
        del times["lightning"][n0]
        bare()
        for _ in range(p.lightning_steps):
            _sync(p.device)
            t0 = time.perf_counter()
            bare()
            _sync(p.device)
            times["bare"].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------------------------------
def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


LABELS = {"frozen": "frozen model (floor)", "lora": "LoRA (ours)", "kasa": "KaSA (ours)",
          "kasa_noreg": "KaSA (ours) without regulariser",
          "peft_lora": "HF PEFT LoRA", "peft_kasa": "HF PEFT KaSA",
          "kasa_unloaded": "KaSA (ours) merge_and_unload",
          "kasa_keep": "KaSA (ours), keep_removed=true"}


def all_methods_table(p: Profile, r: int, batch: torch.Tensor) -> list[str]:
    """The Markdown section of :func:`bench_all_methods`."""
    rows = bench_all_methods(p, r, batch)
    out = ["### Every method: training step over the frozen floor, counted memory\n",
           f"The same Llama with attention and MLP biases (BitFit's parameters); each method timed interleaved "
           f"with the frozen floor ({max(5, p.reps // 2)} repetitions after {p.warmup} warm-up rounds), one method "
           f"at a time; the per-step hooks run as in training (DyLoRA's rank draw, AdaLoRA's allocation, "
           f"horizon {ALL_METHODS_TOTAL_STEPS} steps). Defaults of each method, with r = {r}, alpha = {2 * r} and "
           f"targets {', '.join(TARGETS)} where it takes them; VeRA and SARA keep their own ranks (VeRA r = 1024, "
           f"SARA's per-layer rule), dropout 0 everywhere, the adapters their placement presets (AdapterDrop without adapters in the lowest "
           f"{max(1, p.layers * 5 // 12)} of {p.layers} layers, its 5 of 12 scaled), FFT trains everything. HF PEFT rows: "
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


def _peft_version() -> str:
    import peft

    return peft.__version__


METHOD_LABELS = {"peft_dora": "HF PEFT DoRA", "peft_pissa": "HF PEFT PiSSA", "peft_adalora": "HF PEFT AdaLoRA",
                 "peft_vera": "HF PEFT VeRA"}


def run(profile: str, r: int = 8, beta: float = 1e-4, gamma: float = 1e-3, layers: int | None = None,
        skip_truncation: bool = False, threads: int | None = None, skip_methods: bool = False) -> str:
    """Run every measurement of ``profile`` and return the Markdown report."""
    p = copy.deepcopy(PROFILES[profile])
    if layers:
        p.layers = layers
    if threads:
        p.threads = p.trunc_threads = threads
    if p.threads:
        torch.set_num_threads(p.threads)
    if p.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--full needs a CUDA device")
    out: list[str] = []
    dev = torch.cuda.get_device_name() if p.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, " \
                                                                     f"{torch.get_num_threads()} threads)"
    out.append(f"## kasa.bench --{profile} ({datetime.date.today().isoformat()})\n")
    out.append(f"- device: {dev}; torch {torch.__version__}; dtype {str(p.dtype).removeprefix('torch.')}")
    out.append(f"- model: Llama from config, hidden {p.hidden}, intermediate {p.intermediate}, {p.layers} layers, "
               f"{p.heads} heads, vocab {p.vocab}; batch {p.batch} x seq {p.seq}; targets {', '.join(TARGETS)}; "
               f"r={r}, alpha={2 * r}, beta={beta}, gamma={gamma}")
    out.append(f"- medians of {p.reps} interleaved repetitions (rotated order) after {p.warmup} warm-up rounds; "
               f"{p.threads or torch.get_num_threads()} CPU thread(s) for the step timings\n")

    runners, base = build_runners(p, r, beta, gamma)
    batch = torch.randint(0, p.vocab, (p.batch, p.seq), generator=torch.Generator().manual_seed(1)).to(p.device)
    raw = bench_steps(p, runners, batch)
    steps = {n: statistics.median(v) for n, v in raw.items()}
    floor = steps["frozen"]
    out.append("### Training step (forward + backward + AdamW step)\n")
    out.append("Ratios are medians of per-repetition ratios (both methods timed in the same repetition).\n")
    out.append("| method | step (ms), median | min (ms) | / floor | / LoRA (ours) | over floor (ms) |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for n, s in steps.items():
        out.append(f"| {LABELS[n]} | {s * 1e3:.1f} | {min(raw[n]) * 1e3:.1f} | {paired_ratio(raw, n, 'frozen'):.3f} | "
                   f"{paired_ratio(raw, n, 'lora'):.3f} | {(s - floor) * 1e3:.1f} |")
    over = {n: statistics.median(x - y for x, y in zip(raw[n], raw["frozen"])) for n in raw}
    out.append(f"\nKaSA (ours) / HF PEFT KaSA: {paired_ratio(raw, 'kasa', 'peft_kasa'):.3f}; "
               f"KaSA (ours) / LoRA (ours): {paired_ratio(raw, 'kasa', 'lora'):.3f}; adapter-only cost "
               f"(step - floor, per repetition) KaSA/LoRA: {over['kasa'] / max(over['lora'], 1e-12):.3f}; "
               f"regulariser inside the step (KaSA - KaSA without it, per repetition): "
               f"{statistics.median(x - y for x, y in zip(raw['kasa'], raw['kasa_noreg'])) * 1e3:.1f} ms\n")

    out.append("### Memory per training step\n")
    out.append("Counted: trainable parameters, their gradients, AdamW state, adapter buffers (KaSA's removed factors "
               "with keep_removed=true) and activations autograd saves for backward (saved-tensor hooks, frozen weights "
               "excluded, each tensor once)." + (" CUDA: peak allocated during one step above the memory "
                                                  "allocated before it." if p.device == "cuda" else
                                                  " CPU: no allocator peak is available."))
    out.append("")
    cols = ["trainable", "grads", "adamw", "buffers", "saved", "total"] + (["cuda_peak_step"] if p.device == "cuda" else [])
    out.append("| method | " + " | ".join(cols) + " | total / LoRA (ours) |")
    out.append("|---|" + "---:|" * (len(cols) + 1))
    mem_runners = {**runners, "kasa_keep": build_kasa_keeping_removed(p, r, beta, gamma)}
    mem_runners["kasa_keep"].step(batch)  # AdamW allocates its state on the first step, as the others had
    rows = {n: memory_row(rr, batch, p.device, _buffer_bytes(base)) for n, rr in mem_runners.items()}
    for n, row in rows.items():
        out.append(f"| {LABELS[n]} | " + " | ".join(_fmt_bytes(row[c]) for c in cols)
                   + f" | {row['total'] / rows['lora']['total']:.3f} |")
    del mem_runners["kasa_keep"]
    out.append("")

    regs = bench_regularisers(p, runners["kasa"], runners["peft_kasa"], batch)
    kasa_step = regs.pop("step")
    out.append("### Regulariser (forward + backward of beta * L2 + gamma * L3 alone)\n")
    out.append(f"Timed alone (its own backward), interleaved with KaSA (ours) training steps "
               f"({kasa_step * 1e3:.1f} ms here). Its cost inside a step is the step table's KaSA (ours) "
               f"minus KaSA (ours) without regulariser.\n")
    out.append("| form | ms | % of KaSA (ours) step |")
    out.append("|---|---:|---:|")
    for n, s in regs.items():
        out.append(f"| {n} | {s * 1e3:.2f} | {100 * s / kasa_step:.1f} |")
    out.append("")

    merged = bench_merged(p, runners, batch)
    out.append("### Merged inference (forward, no grad, adapters merged)\n")
    out.append("| method | forward (ms) | / base model |")
    out.append("|---|---:|---:|")
    for n, s in merged.items():
        label = ("base model" if n == "frozen" else LABELS[n] if n == "kasa_unloaded"
                 else LABELS[n] + (" (merge_adapter)" if n.startswith("peft") else " (merged)"))
        out.append(f"| {label} | {s * 1e3:.1f} | {s / merged['frozen']:.3f} |")
    out.append("")
    del runners

    if not skip_methods:
        out.extend(all_methods_table(p, r, batch))

    if not skip_truncation:
        if p.trunc_threads:
            torch.set_num_threads(p.trunc_threads)
        rows = bench_truncation(p, r)
        trunc_threads = torch.get_num_threads()
        if p.threads:
            torch.set_num_threads(p.threads)
        out.append(f"### KaSA truncation of 7B-shaped weights (t = {r}, random Gaussian weights, "
                   f"{trunc_threads if p.device == 'cpu' else 'GPU'} threads)\n")
        out.append("| weight (out x in) | full SVD float32 (s) | fast path auto (s) | speed-up | path | "
                   "rel. diff of truncated weight | content fingerprint (s) |")
        out.append("|---|---:|---:|---:|---|---:|---:|")
        for row in rows:
            shp = " x ".join(map(str, row["shape"]))
            out.append(f"| {shp} | {row['svd']:.2f} | {row['fast']:.2f} | {row['svd'] / row['fast']:.1f}x | "
                       f"{row['used']} | {row['rel_diff']:.1e} | {row['fingerprint']:.3f} |")
        by_shape = {tuple(row["shape"]): row for row in rows}
        if all(s in by_shape or (s[1], s[0]) in by_shape for s in LLAMA7B_TARGET_SHAPES):
            tot = {"svd": 0.0, "fast": 0.0}
            for s, count in LLAMA7B_TARGET_SHAPES.items():
                row = by_shape.get(s) or by_shape[(s[1], s[0])]
                for k in tot:
                    tot[k] += count * row[k]
            out.append(f"\nExtrapolated (per-weight medians x LLaMA-2 7B's 160 q/k/v/up/down weights; "
                       f"up_proj timed as its transpose where not measured): full SVD {tot['svd'] / 60:.1f} min, "
                       f"fast path {tot['fast'] / 60:.1f} min ({tot['svd'] / tot['fast']:.1f}x).")
        out.append("The rel. diff compares against the float32 SVD (itself ~1e-6 off a float64 reference); "
                   "tests/test_svd_fast.py checks the fast path against float64 SVD.\n")
        if p.trunc_model_layers:
            if p.trunc_threads:
                torch.set_num_threads(p.trunc_threads)
            tm = bench_truncation_model(p, r)
            if p.threads:
                torch.set_num_threads(p.threads)
            out.append(f"Whole-model truncation, measured end to end: `method.apply` of KaSA (t = {r}, svd_method "
                       f"auto) on a {tm['layers']}-layer model of this shape ({tm['weights']} q/k/v/up/down weights): "
                       f"**{tm['seconds']:.1f} s**.\n")

    try:
        lt = bench_lightning(p, r)
        lt_error = "kasa.module is not available"
    except Exception as e:  # kasa.module is another component: report it, keep the other tables
        lt, lt_error = None, f"failed: {type(e).__name__}: {e}"
    out.append("### Lightning step vs bare PyTorch loop (KaSA (ours), same model and batch)\n")
    if lt is None:
        out.append(f"TODO: {lt_error}.\n")
    else:
        out.append("| loop | step (ms) | / bare |")
        out.append("|---|---:|---:|")
        out.append(f"| bare PyTorch (AdamW) | {lt['bare'] * 1e3:.1f} | 1.000 |")
        out.append(f"| Lightning Trainer + PeftModule | {lt['lightning'] * 1e3:.1f} | {lt['lightning'] / lt['bare']:.3f} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kasa.bench", description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU, a few minutes (default)")
    g.add_argument("--full", action="store_true", help="GPU: 7B-shaped Llama, bf16")
    g.add_argument("--tiny", action="store_true", help="seconds: tiny model and matrices (tests)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    ap.add_argument("--skip-truncation", action="store_true")
    ap.add_argument("--skip-methods", action="store_true", help="skip the every-method table")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the Markdown report here")
    a = ap.parse_args(argv)
    profile = "full" if a.full else "tiny" if a.tiny else "quick"
    report = run(profile, r=a.r, layers=a.layers, skip_truncation=a.skip_truncation, threads=a.threads,
                 skip_methods=a.skip_methods)
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
