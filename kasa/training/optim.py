"""The optimiser and learning-rate schedule every method trains with (``benchmark.optim``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float = 4e-4
    head_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "linear"  # linear | constant

    def __post_init__(self) -> None:  # checked when the config is built, before any training
        if self.scheduler not in ("linear", "constant"):
            raise ValueError(f"unknown scheduler '{self.scheduler}'; use linear or constant")


def build_optimizer(model: nn.Module, head_params: Iterable[nn.Parameter], o: OptimConfig,
                    total_steps: int) -> dict[str, Any]:
    """AdamW over the trainable parameters (the task head in its own group) and a per-step schedule, in the
    form Lightning's ``configure_optimizers`` returns."""
    head_ids = {id(p) for p in head_params}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # No weight decay on biases, norms and the singular-value vectors (those have their own L2).
        no_decay = p.ndim < 2
        groups.setdefault((id(p) in head_ids, no_decay), []).append(p)
    param_groups = []
    for (is_head, no_decay), params in groups.items():
        lr = o.head_lr if (is_head and o.head_lr is not None) else o.lr
        param_groups.append({"params": params, "lr": lr, "weight_decay": 0.0 if no_decay else o.weight_decay})
    opt = torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    total = max(1, int(total_steps))
    warmup = int(math.ceil(o.warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if o.scheduler == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
