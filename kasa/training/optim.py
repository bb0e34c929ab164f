"""The optimiser and learning-rate schedule every method trains with (``benchmark.optim``).

AdamW (``torch.optim.AdamW``) over the trainable parameters, the task head in its own parameter group, and
transformers' warmup schedules stepped once per optimiser step; with ``loraplus_lr_ratio`` set, HF PEFT's LoRA+
parameter groups instead (:func:`param_groups`). The paper experiments' values and where they come from are in
docs/protocols.md, the optional settings in its section "Optimiser options".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

SCHEDULERS = ("linear", "constant", "cosine")  # transformers' get_{linear,constant,cosine}_schedule_with_warmup
# Which trainable parameters get no weight decay: "ndim_lt_2" exempts every parameter with fewer than two
# dimensions (biases, norm weights, KaSA's singular values), the usual transformers-Trainer convention;
# "none" decays every parameter, as the KaSA reference main.py and microsoft/LoRA's gpt2_ft.py do.
NO_DECAY = ("ndim_lt_2", "none")


def _number(v: Any, lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:  # NaN fails every comparison
        return False
    return (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))


def _betas(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x, 0.0, 1.0) for x in v)


# (key, what is allowed, predicate): the whole of benchmark.optim's validation
_RULES: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("lr", "a number > 0", lambda v: _number(v, 0.0, lo_open=True)),
    ("head_lr", "null (= lr) or a number > 0", lambda v: v is None or _number(v, 0.0, lo_open=True)),
    ("weight_decay", "a number >= 0", lambda v: _number(v, 0.0)),
    ("no_decay", f"one of {', '.join(NO_DECAY)}", lambda v: v in NO_DECAY),
    ("warmup_ratio", "a number in [0, 1]", lambda v: _number(v, 0.0, 1.0, hi_open=False)),
    ("warmup_steps", "null or an integer >= 0",
     lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)),
    ("betas", "two numbers in [0, 1)", _betas),
    ("eps", "a number > 0", lambda v: _number(v, 0.0, lo_open=True)),
    ("scheduler", f"one of {', '.join(SCHEDULERS)}", lambda v: v in SCHEDULERS),
    ("label_smoothing", "a number in [0, 1)", lambda v: _number(v, 0.0, 1.0)),
    ("loraplus_lr_ratio", "null (off) or a number > 0 (LoRA+: the B factors' lr is lr * ratio)",
     lambda v: v is None or _number(v, 0.0, lo_open=True)),
)


@dataclass
class OptimConfig:
    """``benchmark.optim``: its keys and defaults (conf/ composes this class as a structured config, a benchmark
    yaml states only what differs) and its validation (:meth:`problem`)."""

    lr: float = 4e-4
    head_lr: float | None = None  # None: same as lr (the KaSA reference scripts all set HEAD_LR = MODULE_LR)
    weight_decay: float = 0.0
    no_decay: str = "ndim_lt_2"  # ndim_lt_2 | none (see NO_DECAY)
    warmup_ratio: float = 0.06  # warmup = warmup_ratio * total optimiser steps, unrounded (the reference's)
    warmup_steps: int | None = None  # an absolute warmup instead of the ratio (microsoft/LoRA E2E: 500)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "linear"  # linear | constant | cosine (each after the warmup)
    label_smoothing: float = 0.0  # causal-LM token loss only (microsoft/LoRA E2E: 0.1)
    # LoRA+ (Hayou et al. 2024): the method's B-like factors (PeftMethod.loraplus_b_params) train at lr * ratio, in
    # HF PEFT's create_loraplus_optimizer groups. None: off. Left out of the config hash while None.
    loraplus_lr_ratio: float | None = None

    def __post_init__(self) -> None:  # every way of building one is checked: kasa.config.validate, Python callers
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """The first setting that is not allowed, as ``optim.<key>=<value> is not allowed; use <what is>``; the one
        place ``benchmark.optim`` is validated (conf/ holds its keys through this class's structured config)."""
        from kasa.config.checks import first_problem

        return first_problem(self, "optim", _RULES)

    def num_warmup_steps(self, total_steps: int) -> float:
        """The warmup length for ``total_steps`` optimiser steps. Not rounded: the reference passes
        ``warmup_ratio * total`` to transformers as it is (the schedule compares and divides by it)."""
        return float(self.warmup_steps) if self.warmup_steps is not None else self.warmup_ratio * total_steps


def param_groups(model: nn.Module, head_params: Iterable[nn.Parameter], o: OptimConfig,
                 b_params: Iterable[str] = ()) -> list[dict[str, Any]]:
    """AdamW parameter groups over the trainable parameters: the head first (lr ``head_lr``, or ``lr`` when
    None), then the rest (lr ``lr``); each split by ``no_decay`` into decayed and undecayed groups. With
    ``no_decay=none`` these are the reference's two groups, ``[{classifier}, {everything else}]``.

    With ``o.loraplus_lr_ratio`` set, :func:`loraplus_groups` over ``b_params`` (the method's
    ``loraplus_b_params``) instead."""
    if o.loraplus_lr_ratio is not None:
        return loraplus_groups(model, head_params, o, b_params)
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


def loraplus_groups(model: nn.Module, head_params: Iterable[nn.Parameter], o: OptimConfig,
                    b_params: Iterable[str]) -> list[dict[str, Any]]:
    """LoRA+ groups, those of HF PEFT's ``peft.optimizers.create_loraplus_optimizer`` (``loraplus_weight_decay`` =
    ``weight_decay``): ``groupA`` (lr ``lr``, decayed) holds every trainable parameter that is not in B;
    ``groupB`` (lr ``lr * loraplus_lr_ratio``, decayed) the parameters named in ``b_params`` (the last part of
    the name: ``lora_B``) and every other 1-D parameter, less ``groupB_no_decay`` (same lr, no decay): those of
    them that are biases or LayerNorm weights (transformers' ``get_parameter_names``, PEFT's rule;
    ``no_decay=none`` decays them too). PEFT's fourth group, adapters on embedding layers, is always empty here:
    no kasa method wraps an embedding. The head is classified like any other parameter (as PEFT does with
    ``modules_to_save``) unless ``head_lr`` is set: then it keeps its own groups at ``head_lr``, first."""
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    b_names = set(b_params)
    if not b_names:
        raise ValueError(f"optim.loraplus_lr_ratio={o.loraplus_lr_ratio}: the method declares no B-like parameters "
                         "(PeftMethod.loraplus_b_params)")
    decay = {n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n}
    head_ids = {id(p) for p in head_params} if o.head_lr is not None else set()
    head: dict[bool, list[nn.Parameter]] = {}
    group_a, group_b, group_b_no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in head_ids:
            head.setdefault(o.no_decay == "ndim_lt_2" and p.ndim < 2, []).append(p)
        elif name.rsplit(".", 1)[-1] in b_names or p.ndim == 1:
            (group_b if name in decay or o.no_decay == "none" else group_b_no_decay).append(p)
        else:
            group_a.append(p)
    lr_b = o.lr * o.loraplus_lr_ratio
    out = [{"params": params, "lr": o.head_lr, "weight_decay": 0.0 if exempt else o.weight_decay}
           for exempt, params in sorted(head.items())]
    for params, lr, wd in ((group_a, o.lr, o.weight_decay), (group_b, lr_b, o.weight_decay),
                           (group_b_no_decay, lr_b, 0.0)):
        if params:
            out.append({"params": params, "lr": lr, "weight_decay": wd})
    return out


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' linear (or constant, or cosine) schedule with warmup over ``total_steps`` optimiser steps:
    the lr factor is ``step / warmup`` from 0, then decays linearly to 0 at ``total_steps`` (or stays 1, or
    follows half a cosine down to 0: ``get_cosine_schedule_with_warmup``'s default ``num_cycles=0.5``)."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    total = max(1, int(total_steps))
    warmup = o.num_warmup_steps(total)
    if o.scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    if o.scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)


def build_optimizer(model: nn.Module, head_params: Iterable[nn.Parameter], o: OptimConfig,
                    total_steps: int, b_params: Iterable[str] = ()) -> dict[str, Any]:
    """AdamW over :func:`param_groups` and the per-step :func:`build_scheduler`, in the form Lightning's
    ``configure_optimizers`` returns. ``total_steps``: optimiser steps of the whole run (Lightning's
    ``estimated_stepping_batches``: ``ceil(batches per epoch / accumulate_grad_batches) * max_epochs``).
    ``b_params``: the method's ``loraplus_b_params`` (used only with ``loraplus_lr_ratio``)."""
    opt = torch.optim.AdamW(param_groups(model, head_params, o, b_params), lr=o.lr, betas=tuple(o.betas),
                            eps=o.eps)
    sched = build_scheduler(opt, o, total_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
