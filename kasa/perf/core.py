"""Shared pieces of the speed and memory benchmark: profiles, the Llama it builds, one method's runner and interleaved
timing."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

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


ALL_METHODS_TOTAL_STEPS = 1000  # AdaLoRA's budget schedule horizon in the bench (allocation every deltaT)


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
