"""AdaLoRA (Zhang et al., ICLR 2023, arXiv 2303.10512): SVD-form adapters whose rank budget is reallocated.

Per adapted layer ``y = W x + alpha / (ranknum + 1e-5) * P diag(E) Q dropout(x)`` with ``lora_B`` = P
(out x init_r), ``lora_E`` = E (init_r x 1), ``lora_A`` = Q (init_r x in); ``ranknum`` = ``init_r`` and
stays so while triplets are pruned (the reference code and HF PEFT keep the scaling fixed; the ``1e-5`` is
theirs too). Init as the reference/HF PEFT: E = 0, P and Q ~ N(0, 0.02^2).

Regulariser (:meth:`AdaLora.regularization_loss`): ``orth_reg_weight * mean_M ||G(M) - I_r||_F`` over all
P and Q matrices, ``G(Q) = Q Q^T``, ``G(P) = P^T P``. This is the reference code's and HF PEFT's form (an
unsquared Frobenius norm, averaged over the matrices); the paper writes the squared norm, summed.

Budget allocation (:meth:`AdaLora.on_train_step`, called after ``optimizer.step()`` while gradients are
still there, i.e. before ``zero_grad``; ``step`` is the number of optimiser steps done, as HF's
``global_step``):

- importance of every entry ``I = |w * grad|``; sensitivity EMA ``Ibar = beta1 Ibar + (1 - beta1) I``;
  uncertainty EMA ``U = beta2 U + (1 - beta2) |I - Ibar|``; entry score ``s = Ibar * U``;
- triplet score ``S_i = s(E_i) + mean_j s(Q_ij) + mean_j s(P_ji)``;
- budget ``b(t)``: ``init_bgt`` (sum of init ranks) for ``t <= tinit``; then the cubic schedule
  ``int((init_bgt - target_bgt) (1 - (t - tinit) / (T - tfinal - tinit))^3 + target_bgt)``, masking every
  ``deltaT`` steps; ``target_bgt = target_r * n_layers`` in the final ``tfinal`` steps;
- masking zeroes the E entries whose score is at or below the ``(init_bgt - b)``-th smallest score (E stays
  trainable, as in the reference, and is re-masked after each later step);
- at ``t = T - tfinal`` the final mask is fixed (scores are reset); after it the fixed mask is re-applied.

The current mask of every layer is the buffer ``lora_mask`` (saved with the adapter: it is the rank
pattern). ``T`` is ``total_steps`` from the training loop, or the config's ``total_steps``.

``tinit`` and ``tfinal`` are step counts, as in HF PEFT and the reference code. ``tinit_frac`` / ``tfinal_frac``
give them as fractions of ``T`` instead (rounded to steps once ``T`` is known), so one preset keeps a schedule's
shape at every run length (``method=adalora_scaled``: the shape of AdaLoRA's own GLUE scripts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MethodConfig
from .errors import MethodError
from .layer import AdapterLayer
from .method import PeftMethod, check_rank
from .registry import register


class AdaLoraLayer(AdapterLayer):
    """``lora_A`` (r, in), ``lora_E`` (r, 1), ``lora_B`` (out, r): HF PEFT's names and shapes."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0, name: str = "", *,
                 autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, autocast_adapter_dtype=autocast_adapter_dtype)
        check_rank(name or type(base_layer).__name__, r, self.out_features, self.in_features, what="init_r")
        self.r = r
        # Reference/HF PEFT: scaling is alpha (r when alpha <= 0), divided by the initial rank.
        self.scaling = alpha if alpha > 0 else float(r)
        self.ranknum = float(r)
        w = base_layer.weight
        kw = dict(dtype=self.adapter_dtype, device=w.device)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        self.lora_E = nn.Parameter(torch.empty(r, 1, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **kw))
        self.register_buffer("lora_mask", torch.ones(r, dtype=torch.bool, device=w.device))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.lora_E)
        nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B, mean=0.0, std=0.02)

    @property
    def factor(self) -> float:
        return self.scaling / (self.ranknum + 1e-5)

    @property
    def rank(self) -> int:
        """Triplets kept by the current mask."""
        return int(self.lora_mask.sum())

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lora_dropout(x).to(self.lora_A.dtype)
        return F.linear(F.linear(x, self.lora_A * self.lora_E), self.lora_B) * self.factor

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.float() @ (self.lora_A.float() * self.lora_E.float())) * self.factor

    def orth_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``||Q Q^T - I||_F`` and ``||P^T P - I||_F`` (unsquared, as the reference code)."""
        eye = torch.eye(self.r, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return (torch.linalg.norm(self.lora_A @ self.lora_A.T - eye),
                torch.linalg.norm(self.lora_B.T @ self.lora_B - eye))

    @torch.no_grad()
    def apply_mask(self, keep: torch.Tensor) -> None:
        self.lora_mask.copy_(keep.to(self.lora_mask.device))
        self.lora_E.masked_fill_(~self.lora_mask.view(-1, 1), 0.0)


@dataclass
class AdaLoraConfig(MethodConfig):
    init_r: int = 12  # initial rank of every adapter (the paper: 1.5 x the target budget)
    target_r: int = 8  # average rank after allocation
    alpha: float = 16.0  # scaling numerator (HF PEFT's lora_alpha); divided by init_r
    dropout: float = 0.0
    tinit: int = 0  # warm-up steps at the full budget
    tfinal: int = 0  # final steps at the fixed target budget
    deltaT: int = 100  # steps between two allocations
    beta1: float = 0.85  # sensitivity EMA
    beta2: float = 0.85  # uncertainty EMA
    orth_reg_weight: float = 0.1  # weight of the orthogonality regulariser
    total_steps: int | None = None  # T; None: taken from the training loop
    tinit_frac: float | None = None  # tinit as a fraction of T (instead of tinit)
    tfinal_frac: float | None = None  # tfinal as a fraction of T (instead of tfinal)

# T for an exported PEFT config when the run's length is unknown and the schedule is in fractions: PEFT's
# allocator reads the schedule only to train further, and needs some T to accept the config.
NOMINAL_TOTAL_STEPS = 1000


@register("adalora")
class AdaLora(PeftMethod):
    config_cls = AdaLoraConfig
    paper_order = 8
    export_formats = ("peft", "lora", "merged")
    peft_type = "ADALORA"

    def __init__(self, config: AdaLoraConfig):
        super().__init__(config)
        self.reset_importance()
        self.rank_pattern: dict[str, list[bool]] | None = None
        self.run_total_steps: int | None = None

    def validate(self) -> None:
        c = self.config
        if c.init_r < 1 or c.target_r < 0:
            raise MethodError(
                f"adalora needs init_r >= 1 and target_r >= 0 (got init_r={c.init_r}, target_r={c.target_r})")
        if not (0 < c.beta1 < 1 and 0 < c.beta2 < 1):
            raise MethodError(f"adalora beta1={c.beta1}, beta2={c.beta2} must lie in (0, 1)")
        if c.orth_reg_weight < 0:
            raise MethodError(f"adalora orth_reg_weight={c.orth_reg_weight} must be >= 0")
        if c.deltaT < 1:
            raise MethodError(f"adalora deltaT={c.deltaT} must be >= 1")
        for name in ("tinit", "tfinal"):
            frac = getattr(c, f"{name}_frac")
            if frac is None:
                continue
            if not 0 <= frac < 1:
                raise MethodError(f"adalora {name}_frac={frac} must lie in [0, 1)")
            if getattr(c, name):
                raise MethodError(f"adalora: give {name} in steps or {name}_frac as a fraction, not both "
                                  f"({name}={getattr(c, name)}, {name}_frac={frac})")
        if (c.tinit_frac or 0) + (c.tfinal_frac or 0) >= 1:
            raise MethodError(f"adalora schedule leaves no budgeting phase: tinit_frac={c.tinit_frac} + "
                              f"tfinal_frac={c.tfinal_frac} must stay below 1")
        if c.total_steps is not None:
            self._check_schedule(c.total_steps)

    def schedule_steps(self, total: int) -> tuple[int, int]:
        """``(tinit, tfinal)`` in steps for a run of ``total`` steps (fractions rounded to the nearest step, halves
        to even as Python's ``round``)."""
        c = self.config
        tinit = c.tinit if c.tinit_frac is None else round(c.tinit_frac * total)
        tfinal = c.tfinal if c.tfinal_frac is None else round(c.tfinal_frac * total)
        return int(tinit), int(tfinal)

    def _check_schedule(self, total: int) -> None:
        tinit, tfinal = self.schedule_steps(total)
        if total <= 0 or tinit >= total - tfinal:
            raise MethodError(
                f"adalora schedule leaves no budgeting phase: tinit={tinit}, tfinal={tfinal}, total_steps={total} "
                "(need tinit < total_steps - tfinal)")

    def wrap(self, name: str, module: nn.Module) -> AdaLoraLayer:
        c = self.config
        return AdaLoraLayer(module, c.init_r, c.alpha, c.dropout, name=name,
                            autocast_adapter_dtype=c.autocast_adapter_dtype)

    def layers(self, model: nn.Module) -> dict[str, AdaLoraLayer]:
        return {n: m for n, m in model.named_modules() if isinstance(m, AdaLoraLayer)}

    # -- regulariser ------------------------------------------------------------------------------
    def regularization_loss(self, model: nn.Module) -> torch.Tensor:
        layers = list(self.layers(model).values())
        if not layers or self.config.orth_reg_weight == 0:
            return super().regularization_loss(model)
        total = sum(a + b for a, b in (m.orth_terms() for m in layers))
        return self.config.orth_reg_weight * total / (2 * len(layers))

    # -- budget allocation --------------------------------------------------------------------------
    def reset_importance(self) -> None:
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}

    def budgets(self, model: nn.Module) -> tuple[int, int]:
        """``(init_bgt, target_bgt)``: the summed initial ranks and ``target_r`` times the layer count."""
        layers = self.layers(model)
        return sum(m.r for m in layers.values()), self.config.target_r * len(layers)

    def budget_schedule(self, step: int, total: int, init_bgt: int, target_bgt: int) -> tuple[int, bool]:
        """``(budget, mask_now)`` at ``step``: constant, cubic decrease, then the target."""
        tinit, tfinal = self.schedule_steps(total)
        if step <= tinit:
            return init_bgt, False
        if step > total - tfinal:
            return target_bgt, True
        frac = 1 - (step - tinit) / (total - tfinal - tinit)
        return int((init_bgt - target_bgt) * frac ** 3 + target_bgt), step % self.config.deltaT == 0

    @torch.no_grad()
    def update_importance(self, model: nn.Module) -> None:
        b1, b2 = self.config.beta1, self.config.beta2
        for lname, layer in self.layers(model).items():
            for pname in ("lora_A", "lora_E", "lora_B"):
                p = getattr(layer, pname)
                key = f"{lname}.{pname}"
                grad = p.grad if p.grad is not None else torch.zeros_like(p)  # no gradient: no sensitivity
                ipt = (p * grad).abs()
                if key not in self.exp_avg_ipt:
                    self.exp_avg_ipt[key] = torch.zeros_like(p)
                    self.exp_avg_unc[key] = torch.zeros_like(p)
                self.exp_avg_ipt[key] = b1 * self.exp_avg_ipt[key] + (1 - b1) * ipt
                self.exp_avg_unc[key] = b2 * self.exp_avg_unc[key] + (1 - b2) * (ipt - self.exp_avg_ipt[key]).abs()

    def triplet_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Score of every singular triplet of every layer (an ``r``-vector per layer)."""
        out = {}
        for lname, layer in self.layers(model).items():
            def score(pname: str) -> torch.Tensor:
                key = f"{lname}.{pname}"
                if key not in self.exp_avg_ipt:
                    return torch.zeros_like(getattr(layer, pname))
                return self.exp_avg_ipt[key] * self.exp_avg_unc[key]
            # E + (Q + P), in that order, so ties break exactly as in the reference implementation.
            out[lname] = score("lora_E").view(-1) + (score("lora_A").mean(dim=1) + score("lora_B").mean(dim=0))
        return out

    @torch.no_grad()
    def mask_to_budget(self, model: nn.Module, budget: int, init_bgt: int) -> dict[str, list[bool]]:
        scores = self.triplet_scores(model)
        k = init_bgt - budget
        if k <= 0:  # nothing to prune (the reference code would fail in kthvalue here)
            threshold = float("-inf")
        else:
            threshold = torch.kthvalue(torch.cat([s.float().cpu() for s in scores.values()]), k=k).values.item()
        pattern = {}
        layers = self.layers(model)
        for lname, s in scores.items():
            keep = ~(s <= threshold)
            layers[lname].apply_mask(keep)
            pattern[lname] = keep.tolist()
        return pattern

    @torch.no_grad()
    def mask_with_pattern(self, model: nn.Module, pattern: dict[str, list[bool]]) -> None:
        for lname, layer in self.layers(model).items():
            layer.apply_mask(torch.tensor(pattern[lname], dtype=torch.bool))

    def total_steps(self, total_steps: int | None) -> int:
        total = total_steps if total_steps is not None else self.config.total_steps
        if total is None:
            raise MethodError("adalora needs the total number of training steps: pass total_steps to on_train_step "
                              "or set method.total_steps")
        self._check_schedule(int(total))
        return int(total)

    def on_train_step(self, model: nn.Module, step: int, total_steps: int | None = None) -> None:
        """Update importance and reallocate ranks; call after ``optimizer.step()``, before ``zero_grad()``."""
        total = self.run_total_steps = self.total_steps(total_steps)  # kept for an export after training
        final = total - self.schedule_steps(total)[1]
        init_bgt, target_bgt = self.budgets(model)
        if step < final:
            self.update_importance(model)
            budget, mask_now = self.budget_schedule(step, total, init_bgt, target_bgt)
            if mask_now:
                self.rank_pattern = self.mask_to_budget(model, budget, init_bgt)
        elif step == final:
            budget, _ = self.budget_schedule(step, total, init_bgt, target_bgt)
            self.rank_pattern = self.mask_to_budget(model, budget, init_bgt)
            self.reset_importance()
        else:
            if self.rank_pattern is None:  # e.g. resumed after the final allocation: the masks are saved
                self.rank_pattern = {n: m.lora_mask.tolist() for n, m in self.layers(model).items()}
            self.mask_with_pattern(model, self.rank_pattern)

    def peft_schedule(self) -> tuple[int, int, int]:
        """``(tinit, tfinal, total_step)`` for an exported PEFT ``AdaLoraConfig``: the run's own when its length is
        known (config or training loop), else a nominal one that PEFT accepts (it reads them only to train further)."""
        c = self.config
        total = c.total_steps or self.run_total_steps
        if total is None:
            if c.tinit_frac is None and c.tfinal_frac is None:
                return int(c.tinit), int(c.tfinal), int(c.tinit + c.tfinal + 1)
            total = NOMINAL_TOTAL_STEPS
        return (*self.schedule_steps(int(total)), int(total))

    def ranks(self, model: nn.Module) -> dict[str, int]:
        """Current rank of every adapted layer (for logging)."""
        return {n: m.rank for n, m in self.layers(model).items()}

    def final_parameter_count(self, model: nn.Module) -> int:
        """Trainable parameters at the final budget (``target_r`` triplets per layer on average), the count
        AdaLoRA's paper and the tables citing it report; :meth:`trainable_parameter_count` is the initial
        ``init_r`` one. A triplet of an (out x in) layer costs ``in + out + 1``. Once the masks hold the final
        budget (after ``T - tfinal`` steps) they give each layer's rank; before, every layer counts ``target_r``."""
        layers = self.layers(model)
        _, target_bgt = self.budgets(model)
        # meta tensors (kasa.params) hold no mask values: the budget's count
        at_final = (not any(m.lora_mask.is_meta for m in layers.values())
                    and sum(m.rank for m in layers.values()) == target_bgt)
        return sum((m.rank if at_final else self.config.target_r) * (m.in_features + m.out_features + 1)
                   for m in layers.values())
