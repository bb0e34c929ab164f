"""The optimiser and learning-rate schedule every method trains with (``benchmark.optim``).

AdamW (``torch.optim.AdamW``) over the trainable parameters, the task head in its own parameter group, and
transformers' warmup schedules stepped once per optimiser step. The paper experiments' values and where they
come from are in docs/protocols.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

SCHEDULERS = ("linear", "constant")
# Which trainable parameters get no weight decay: "ndim_lt_2" exempts every parameter with fewer than two
# dimensions (biases, norm weights, KaSA's singular values), the usual transformers-Trainer convention;
# "none" decays every parameter, as the KaSA reference main.py and microsoft/LoRA's gpt2_ft.py do.
NO_DECAY = ("ndim_lt_2", "none")


@dataclass
class OptimConfig:
    lr: float = 4e-4
    head_lr: float | None = None  # None: same as lr (the KaSA reference scripts all set HEAD_LR = MODULE_LR)
    weight_decay: float = 0.0
    no_decay: str = "ndim_lt_2"  # ndim_lt_2 | none (see NO_DECAY)
    warmup_ratio: float = 0.06  # warmup = warmup_ratio * total optimiser steps, unrounded (the reference's)
    warmup_steps: int | None = None  # an absolute warmup instead of the ratio (microsoft/LoRA E2E: 500)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "linear"  # linear | constant (both after the warmup)
    label_smoothing: float = 0.0  # causal-LM token loss only (microsoft/LoRA E2E: 0.1)

    def __post_init__(self) -> None:  # checked when the config is built: kasa.recipe.validate, before any loading
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler='{self.scheduler}' is not a schedule; use one of {', '.join(SCHEDULERS)}")
        if self.no_decay not in NO_DECAY:
            raise ValueError(f"optim.no_decay='{self.no_decay}' is not a weight-decay filter; use one of "
                             f"{', '.join(NO_DECAY)}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"optim.warmup_ratio={self.warmup_ratio} is outside [0, 1]")
        if self.warmup_steps is not None and (isinstance(self.warmup_steps, bool) or int(self.warmup_steps) !=
                                              self.warmup_steps or self.warmup_steps < 0):
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be a non-negative integer or null")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"optim.label_smoothing={self.label_smoothing} is outside [0, 1)")
        for name in ("lr", "head_lr", "weight_decay", "eps"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"optim.{name}={v} is negative")

    def num_warmup_steps(self, total_steps: int) -> float:
        """The warmup length for ``total_steps`` optimiser steps. Not rounded: the reference passes
        ``warmup_ratio * total`` to transformers as it is (the schedule compares and divides by it)."""
        return float(self.warmup_steps) if self.warmup_steps is not None else self.warmup_ratio * total_steps


def param_groups(model: nn.Module, head_params: Iterable[nn.Parameter], o: OptimConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups over the trainable parameters: the head first (lr ``head_lr``, or ``lr`` when
    None), then the rest (lr ``lr``); each split by ``no_decay`` into decayed and undecayed groups. With
    ``no_decay=none`` these are the reference's two groups, ``[{classifier}, {everything else}]``."""
    head_ids = {id(p) for p in head_params}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = o.no_decay == "ndim_lt_2" and p.ndim < 2
        groups.setdefault((id(p) in head_ids, exempt), []).append(p)
    out = []
    for (is_head, exempt), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        lr = o.head_lr if (is_head and o.head_lr is not None) else o.lr
        out.append({"params": params, "lr": lr, "weight_decay": 0.0 if exempt else o.weight_decay})
    return out


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' linear (or constant) schedule with warmup over ``total_steps`` optimiser steps: the lr
    factor is ``step / warmup`` from 0, then decays linearly to 0 at ``total_steps`` (or stays 1)."""
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    total = max(1, int(total_steps))
    warmup = o.num_warmup_steps(total)
    if o.scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)


def build_optimizer(model: nn.Module, head_params: Iterable[nn.Parameter], o: OptimConfig,
                    total_steps: int) -> dict[str, Any]:
    """AdamW over :func:`param_groups` and the per-step :func:`build_scheduler`, in the form Lightning's
    ``configure_optimizers`` returns. ``total_steps``: optimiser steps of the whole run (Lightning's
    ``estimated_stepping_batches``: ``ceil(batches per epoch / accumulate_grad_batches) * max_epochs``)."""
    opt = torch.optim.AdamW(param_groups(model, head_params, o), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = build_scheduler(opt, o, total_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
