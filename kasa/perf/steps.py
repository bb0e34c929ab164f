"""Training-step, regulariser, merged-inference and Lightning-loop timings of KaSA against LoRA, HF PEFT's LoRA/KaSA
and the frozen floor."""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Callable

import torch
from torch import nn

from kasa.methods import build_method
from kasa.methods.kasa import KasaLayer, _batched_l2, _batched_l3
from kasa.perf.core import TARGETS, Profile, Runner, _clone, _sync, build_llama, interleaved, interleaved_raw


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


def bench_lightning(p: Profile, r: int) -> dict[str, float]:
    """Median step of the classification module under a Lightning Trainer vs a bare loop, same model and batch."""
    import lightning as L

    from kasa.tasks.classification.module import ClassificationModule
    from kasa.training import OptimConfig

    torch.manual_seed(0)
    model = build_llama(p)
    method = build_method("kasa", r=r, alpha=2 * r, target_modules=TARGETS)
    method.apply(model)
    batch = torch.randint(0, p.vocab, (p.batch, p.seq), generator=torch.Generator().manual_seed(1)).to(p.device)
    # every loader batch is `batch` itself: the same rows, in order, for each step
    data = [{"input_ids": batch[i], "labels": batch[i]} for i in range(p.batch)] * (p.lightning_steps + 1)
    module = ClassificationModule(model, method, num_labels=2, metrics=["accuracy"],
                                  optim=OptimConfig(scheduler="constant"))

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
                            # 32-true keeps the model as built (a bf16 base, float32 adapters, as kasa-train runs it);
                            # bf16-true would cast the adapters down, for this loop and the bare one after it
                            callbacks=[Timer()], precision="32-true")
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
