"""CorDA: Context-oriented Decomposition Adaptation (Yang et al., NeurIPS 2024, arXiv 2406.05223).

For each target layer, the input covariance ``C`` is collected on calibration data; the weight is
decomposed as ``W C = U S V^T`` (so ``W = U S (V^T C^-1)``) and LoRA is initialised from r of these
context-oriented triplets, the base keeping the residual (the model's output is unchanged at init):

- ``mode="kpa"`` (knowledge-preserved adaptation): the r SMALLEST components become the adapter, the
  components that matter most for the calibration context (e.g. world-knowledge QA) stay frozen;
- ``mode="ipa"`` (instruction-previewed adaptation): the r LARGEST components, calibrated on the task.

Numerics follow HF PEFT's ``preprocess_corda`` (peft 0.21): each calibration sequence ``X`` (tokens x in)
adds ``(X / |max X|)^T (X / |max X|)`` and the sum is divided by the number of sequences; before the SVD,
``C`` is damped by ``damp * mean(diag C) * I`` with ``damp = 0.01``, doubled until the inverse is accurate
(``||C C^-1 - I||_F < 0.05``). Unlike PEFT, padded positions (``attention_mask == 0``) are left out when
the batch gives a mask; with unpadded sequences both agree.

Default ``ipa`` (HF PEFT's default ``ipm`` too): ``kasa-train`` calibrates on the run's own training batches,
i.e. on the task, which is what IPA means. KPA as CorDA's paper runs it calibrates on world-knowledge QA
(e.g. TriviaQA) to protect that knowledge; pass such batches to ``calibrate`` yourself for that setting.

Calibration is an explicit step, done on the un-adapted model::

    method = build_method("corda", r=8, mode="kpa")
    method.calibrate(model, batches)        # batches: dicts of model kwargs, tensors or tuples
    method.apply(model)                     # or method.apply(model, calibration=batches)

A saved adapter carries its initial factors, so ``method.apply(fresh, adapter_state_dict=sd)`` rebuilds the
residual base without calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from .errors import MethodError
from .method import check_rank, feed_calibration
from .pissa import ResidualLoraLayer, ResidualLoraMethod, SvdInitConfig
from .registry import register
from .targets import match_target
from .weights import get_weight, is_linear_like

MODES = {"kpa": "kpa", "ipa": "ipa", "kpm": "kpa", "ipm": "ipa"}  # PEFT's names as aliases


@dataclass
class CordaConfig(SvdInitConfig):
    alpha: float = 8.0  # CorDA sets lora_alpha = r (scaling 1), as PiSSA
    mode: str = "ipa"  # ipa (instruction-previewed, largest r) | kpa (knowledge-preserved, smallest r)
    calibration_samples: int = 256  # sequences of calibration data the paper collects (training loops read it)


@torch.no_grad()
def damped_inverse(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C + d I, (C + d I)^-1)`` with ``d = damp * mean(diag C)``, damp doubled from 0.01 until accurate."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    damp = 0.01
    mean_diag = torch.diagonal(cov).mean()
    while True:
        fixed = cov + eye * (mean_diag * damp)
        inv = torch.linalg.inv(fixed)
        if torch.dist(fixed @ inv, eye).item() < 0.05:
            return fixed, inv
        damp *= 2
        if damp > 1e6:  # cannot happen for a finite PSD matrix; guards against an endless loop on NaN
            raise MethodError("corda: the calibration covariance cannot be inverted (non-finite values?)")


@torch.no_grad()
def context_triplets(weight: torch.Tensor, cov: torch.Tensor, r: int, mode: str, dtype: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The r context-oriented triplets ``(U, S, V^T C^-1)`` of an (out x in) weight, largest (ipa) or smallest (kpa)."""
    w = weight.detach().to(dtype)
    fixed, inv = damped_inverse(cov.to(device=w.device, dtype=dtype))
    U, S, Vh = torch.linalg.svd(w @ fixed, full_matrices=False)
    Vh = Vh @ inv
    sel = slice(0, r) if mode == "ipa" else slice(S.shape[0] - r, S.shape[0])
    U, S, Vh = U[:, sel], S[sel], Vh[sel, :]
    for what, t in (("U", U), ("S", S), ("V", Vh)):
        if not torch.isfinite(t).all():
            raise MethodError(f"corda: non-finite values in {what} of the context-oriented SVD")
    return U, S, Vh


@register("corda")
class Corda(ResidualLoraMethod):
    """CorDA: adapter from the context-oriented SVD of ``W C``, residual base; needs :meth:`calibrate` first."""

    config_cls = CordaConfig
    paper_order = 15
    export_formats = ("peft", "lora", "merged")
    peft_type = None  # its peft export is PEFT's converted plain LoRA; PEFT's CorDA init is not imported
    loraplus_b_params = ("lora_B",)
    needs_calibration: ClassVar[bool] = True

    def __init__(self, config: CordaConfig):
        super().__init__(config)
        self.covariances: dict[str, torch.Tensor] | None = None
        self._init_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c.mode not in MODES:
            raise MethodError(f"corda mode='{c.mode}' is unknown; choose kpa or ipa (PEFT's kpm / ipm also work)")
        if c.calibration_samples < 1:
            raise MethodError(f"corda calibration_samples={c.calibration_samples} must be at least 1")

    @property
    def mode(self) -> str:
        return MODES[self.config.mode]

    # -- calibration ------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches: Iterable[Any], max_samples: int | None = None
                  ) -> dict[str, torch.Tensor]:
        """Run ``model`` (in eval mode, no grad) over ``batches`` and store each target layer's input covariance.

        A batch is a dict of model keyword arguments (its ``attention_mask`` masks padding out), a tuple/list
        of positional arguments, or a tensor. Stops after ``max_samples`` sequences (all when None).
        Returns (and keeps for :meth:`apply`) ``{layer name: in x in covariance}`` in float32.
        """
        targets = self.targets(model)
        layers = {n: m for n, m in model.named_modules() if n and match_target(n, targets) and is_linear_like(m)}
        if not layers:
            raise MethodError(f"corda: target_modules={targets!r} match no linear layer of {type(model).__name__}")
        sums: dict[str, torch.Tensor] = {}
        counts = {n: 0 for n in layers}
        mask_box: list[torch.Tensor | None] = [None]

        def make_hook(lname: str):
            def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
                x = inputs[0].detach().float()
                x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x[None]
                mask = mask_box[0]
                if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
                    keep = mask.to(device=x.device, dtype=torch.bool)[..., None]
                    peak = x.masked_fill(~keep, float("-inf")).amax(dim=(1, 2)).abs()
                    x = x * keep
                else:
                    peak = x.amax(dim=(1, 2)).abs()
                # per-sequence scale as PEFT (abs of the max, not max of abs); an all-zero sequence stays zero
                x = x / torch.where(peak > 0, peak, torch.ones_like(peak))[:, None, None]
                if not torch.isfinite(x).all():
                    raise MethodError(f"corda: non-finite calibration inputs at '{lname}'")
                cov = torch.einsum("bti,btj->ij", x, x)
                sums[lname] = sums[lname] + cov if lname in sums else cov
                counts[lname] += x.shape[0]
            return hook

        handles = [m.register_forward_hook(make_hook(n)) for n, m in layers.items()]
        feed_calibration(model, batches, max_samples, handles, mask_box)
        unseen = sorted(n for n in layers if counts[n] == 0)
        if unseen:
            raise MethodError(f"corda: calibration never reached {unseen[:5]} (empty batches?)")
        self.covariances = {n: sums[n] / counts[n] for n in layers}
        return self.covariances

    # -- injection --------------------------------------------------------------------------------
    def apply(self, model: nn.Module, calibration: Iterable[Any] | None = None,
              adapter_state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Calibrate (if ``calibration`` is given) and wrap the targets; see the module docstring.

        ``adapter_state_dict``: rebuild from a saved CorDA adapter instead (no calibration needed) and load it.
        The stored covariances are released once applied.
        """
        if adapter_state_dict is not None:
            self._init_factors = {}
            for k, v in adapter_state_dict.items():
                if k.endswith(".residual_init_A"):
                    lname = k[: -len(".residual_init_A")]
                    B = adapter_state_dict.get(f"{lname}.residual_init_B")
                    if B is None:
                        raise MethodError(f"corda: adapter state dict has {k} but no {lname}.residual_init_B")
                    self._init_factors[lname] = (v, B)
            try:
                super().apply(model)
            finally:
                self._init_factors = None
            return self.load_adapter_state_dict(model, adapter_state_dict)
        if calibration is not None:
            self.calibrate(model, calibration, max_samples=self.config.calibration_samples)
        if self.covariances is None and self.count_only:
            return self._apply_shapes_only(model)
        if self.covariances is None:
            raise MethodError(
                "corda needs calibration data: call method.calibrate(model, batches) or "
                "method.apply(model, calibration=batches) (or apply(model, adapter_state_dict=sd) to reload)"
            )
        try:
            return super().apply(model)
        finally:
            self.covariances = None  # in x in per layer: too large to keep around

    def _apply_shapes_only(self, model: nn.Module) -> nn.Module:
        """Parameter counting (:meth:`counting_only`): zero initial factors of the right shapes, no calibration."""
        c = self.config
        self._init_factors = {}
        for n, m in model.named_modules():
            if n and match_target(n, self.targets(model)) and is_linear_like(m):
                w = get_weight(m)
                self._init_factors[n] = (w.new_zeros(c.r, w.shape[1]), w.new_zeros(w.shape[0], c.r))
        try:
            return super().apply(model)
        finally:
            self._init_factors = None

    def before_wrap(self, model: nn.Module, names: list[str]) -> None:
        have = self._init_factors if self._init_factors is not None else (self.covariances or {})
        missing = sorted(set(names) - set(have))
        if missing:
            what = "the adapter state dict" if self._init_factors is not None else "the calibration"
            raise MethodError(f"corda: {what} has nothing for target layer(s) {missing[:5]} "
                              "(calibrated another model?)")

    def initial_triplets(self, name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from .svd import svd_dtype

        assert self.covariances is not None
        return context_triplets(get_weight(module), self.covariances[name], self.config.r, self.mode,
                                svd_dtype(self.config.svd_dtype))

    def wrap(self, name: str, module: nn.Module) -> ResidualLoraLayer:
        if self._init_factors is None:
            return super().wrap(name, module)
        c = self.config
        out_f, in_f = get_weight(module).shape
        check_rank(name, c.r, out_f, in_f)
        A, B = self._init_factors[name]
        return ResidualLoraLayer(module, c.r, self.alpha, c.dropout, c.use_rslora, A, B, name=name,
                                 autocast_adapter_dtype=c.autocast_adapter_dtype)
