"""KaSA: Knowledge-aware Singular-value Adaptation (Wang et al., ICLR 2025, arXiv 2412.06071).

1. Knowledge-based SVD truncation: the base weight W loses its ``t`` smallest singular triplets once,
   before training (``W_world = W - U_t S_t V_t^T``, computed in float32 or float64, cast back).
2. Knowledge-aware singular-value adaptation:
   ``y = W_world x + scaling * dU diag(dsigma) dV^T dropout(x)`` (``lora_B`` = dU, ``lora_A`` = dV^T,
   ``lora_diag`` = dsigma; A Kaiming-uniform, B zero, dsigma ~ N(0, 1)).
3. Objective ``L_task + beta * L2 + gamma * L3`` with ``L2 = sum ||dsigma||^2`` and
   ``L3 = sum ||dU^T dU - I_r||_F + ||dV^T dV - I_r||_F`` (``regularizer="paper"``, as HF PEFT), or the
   reference ``main.py`` form (``regularizer="reference"``): ``||A^T A - I_in||_F + ||B B^T - I_out||_F``
   and the sum divided by the number of adapted modules. The reference form is evaluated through the
   r x r Gram matrices (exact identity below), so it never builds in x in or out x out matrices.

Switches for every ablation and for the reference code's behaviour:
``truncation``: ``paper`` (drop the t smallest of min(in, out)) | ``reference`` (keep ``in - t``
components, so wide weights lose nothing) | ``none`` | ``activation_aware`` (beyond the paper, below);
``truncation_rank`` (defaults to ``r``); ``singular_values``: ``learnable`` | ``off`` (plain LoRA on the
truncated base).

``truncation=activation_aware`` drops the t smallest triplets of ``W diag(s)`` instead of W, where ``s`` is
the per-input-channel RMS of the layer's inputs over calibration batches (padding left out; ``kasa-train``
calibrates on the run's training batches, as for CorDA): for ``W diag(s) = U S V^T`` the removed part in the
original coordinates is ``U_t S_t V_t^T diag(s)^-1`` (still rank t, so ``export_lora`` stays exact), the
directions whose removal costs the least output energy on the calibration inputs. A weight-only SVD cannot
see that a small singular direction may meet large inputs (docs/findings.md: on SmolLM2-135M the paper's
truncation costs ~7 nats before training). ``s`` is kept as the buffer ``kasa_input_scale`` (``in`` floats
per layer) and saved with the adapter, so ``apply(model, adapter_state_dict=sd)`` re-derives the same
truncation without calibration data; the on-disk cache keys on its fingerprint too.

Truncation cost: ``svd_method="auto"`` (default) finds only the t smallest triplets from a float64
eigendecomposition of the k x k Gram matrix, falling back to a float64 full SVD for a weight whose
spectrum makes that inaccurate (:mod:`kasa.methods.svd`); ``svd`` is the plain full SVD in ``svd_dtype``.
:meth:`Kasa.before_wrap` decomposes same-shaped weights in batched calls, and ``truncation_cache`` (or
env ``KASA_TRUNCATION_CACHE``) keeps the removed factors on disk, keyed by the weight's content
(:mod:`kasa.methods.truncation_cache`), so a sweep pays each decomposition once.

With ``keep_removed=true`` the removed part ``U_t S_t`` / ``V_t^T`` is kept as buffers: saved with the
adapter, it lets a fresh base be re-truncated from the saved factors, and :func:`export_lora` writes an
exact plain LoRA of rank ``t + r`` on the ORIGINAL weights. It costs as much memory as ``A`` and ``B``
together (2.3 % of the training memory of the bench's small Llama, see docs/benchmarks.md), so the default
(``false``, memory as HF PEFT's KaSA) drops it after truncating; a reload then re-derives the same
truncation through ``apply`` (deterministic, and cached on disk with ``truncation_cache``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoraConfigBase
from .errors import MethodError
from .lora import LoraLayer
from .method import PeftMethod, check_rank, feed_calibration
from .registry import register
from .svd import batched_smallest_triplets, check_svd_method, smallest_triplets, svd_dtype
from .targets import match_target
from .truncation_cache import TruncationCache, cache_key, model_identity, resolve_cache_dir, weight_fingerprint
from .weights import get_weight, set_weight

TRUNCATIONS = ("paper", "reference", "none", "activation_aware")
SINGULAR_VALUES = ("learnable", "off")
REGULARIZERS = ("paper", "reference")


def kept_components(out_features: int, in_features: int, t: int, truncation: str) -> int:
    """How many singular triplets of an (out x in) weight survive the truncation."""
    k = min(out_features, in_features)
    if truncation in ("paper", "activation_aware"):
        return k - t
    if truncation == "reference":  # the reference code keeps `in_features - r` whatever the shape
        return min(k, in_features - t)
    return k


# -- activation-aware truncation ---------------------------------------------------------------------
# Channels whose calibration RMS is 0 (never active) are floored at this fraction of the layer's largest RMS so
# that diag(s) is invertible; the removed part is then the finite limit s_j -> 0: W_world diag(s) on the live
# channels is the best rank k - t approximation of theirs, and a dead channel's column of W_world is its column of
# W projected onto the kept left singular directions (it meets no calibration input either way).
SCALE_FLOOR = 1e-6


def safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """``s`` in float64 with zero (and negative or non-finite) entries raised to ``SCALE_FLOOR * max(s)``."""
    s = scale.detach().double()
    if not torch.isfinite(s).all():
        raise MethodError("kasa activation_aware: non-finite calibration statistics (inputs overflowed?)")
    top = s.max() if s.numel() else s.new_zeros(())
    if top <= 0:
        raise MethodError("kasa activation_aware: every input channel of a layer had zero RMS on the calibration "
                          "data (nothing reached it?)")
    return s.clamp_min(SCALE_FLOOR * top)


@torch.no_grad()
def activation_aware_triplets(weights: torch.Tensor, scales: torch.Tensor, t: int, method: str = "auto"
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The removed part ``(U_t S_t, V_t^T diag(s)^-1)`` of a stack ``(b, out, in)`` of weights, in float64.

    ``W diag(s) = U S V^T`` (``scales``: ``(b, in)``, floored by :func:`safe_scale`) and its t smallest triplets
    give ``W_world = W - U_t S_t V_t^T diag(s)^-1``, whose ``W_world diag(s)`` is the best rank ``k - t``
    approximation of ``W diag(s)``. Decomposed in float64 whatever ``svd_dtype``: the scales can span several
    orders of magnitude (a few very large hidden features), which float32 would round away.
    """
    s = torch.stack([safe_scale(x) for x in scales]).to(weights.device)
    U, S, Vh, _used = batched_smallest_triplets(weights.detach().double() * s[:, None, :], t, torch.float64, method)
    return U * S[:, None, :], Vh / s[:, None, :]


@torch.no_grad()
def input_rms(model: nn.Module, names: list[str], batches: Iterable[Any], max_samples: int | None = None
              ) -> dict[str, torch.Tensor]:
    """``{name: (in,) float32}``: the RMS of each input channel of the layers ``names`` over ``batches``.

    ``model`` runs in eval mode without grad. A batch is a dict of model keyword arguments (positions where its
    ``attention_mask`` is 0 are left out), a tuple of positional arguments or a tensor, as for CorDA's
    calibration; at most ``max_samples`` sequences are read (all when None). Sums are accumulated in float64.
    """
    sq: dict[str, torch.Tensor] = {}
    count = {n: 0 for n in names}
    mask_box: list[torch.Tensor | None] = [None]

    def make_hook(lname: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0].detach().double()
            x = x.reshape(-1, x.shape[-2], x.shape[-1]) if x.dim() >= 3 else x[None]
            mask = mask_box[0]
            if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
                keep = mask.to(device=x.device, dtype=torch.bool)
                x = x[keep]
            else:
                x = x.reshape(-1, x.shape[-1])
            sq[lname] = sq[lname] + x.pow(2).sum(0) if lname in sq else x.pow(2).sum(0)
            count[lname] += x.shape[0]
        return hook

    handles = [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
    feed_calibration(model, batches, max_samples, handles, mask_box)
    unseen = sorted(n for n in names if count[n] == 0)
    if unseen:
        raise MethodError(f"kasa activation_aware: the calibration data never reached {unseen[:5]} (empty batches?)")
    return {n: (sq[n] / count[n]).sqrt().float() for n in names}


# Weights stacked into one batched decomposition: at most this many float64 bytes at a time. CPU LAPACK
# loops over a batch anyway, so there the cap only bounds memory (one 4096 x 4096 weight per call).
_BATCH_BYTES = {"cuda": 2 << 30, "cpu": 256 << 20}


@torch.no_grad()
def compute_removed(model: nn.Module, names: list[str], config: "KasaConfig", truncation_rank: int,
                    scales: dict[str, torch.Tensor] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{target name: (U_t S_t, V_t^T)}`` for every target of ``model``, the factors KaSA removes.

    Validates every shape before any decomposition, reads the on-disk cache when one is configured,
    and decomposes the misses grouped by (shape, device) in batched calls. ``truncation=activation_aware``
    needs ``scales`` (``{name: per-input-channel RMS}``) and returns ``(U_t S_t, V_t^T diag(s)^-1)``.
    """
    c = config
    t = truncation_rank
    dtype = svd_dtype(c.svd_dtype)
    aware = c.truncation == "activation_aware"
    if aware:
        missing = sorted(n for n in names if scales is None or n not in scales)
        if missing:
            raise MethodError(f"kasa truncation=activation_aware has no calibration statistics for {missing[:5]}: "
                              "call method.calibrate(model, batches) or method.apply(model, calibration=batches)")
    todo: dict[str, tuple[torch.Tensor, int]] = {}
    for n in names:
        base = model.get_submodule(n)
        w = get_weight(base)
        out_f, in_f = w.shape
        check_rank(n, c.r, out_f, in_f)
        if c.truncation != "none":
            check_rank(n, t, out_f, in_f, what="truncation_rank")
        todo[n] = (w, min(out_f, in_f) - kept_components(out_f, in_f, t, c.truncation))

    removed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    cache_dir = resolve_cache_dir(c.truncation_cache)
    cache = TruncationCache(cache_dir) if cache_dir is not None else None
    keys: dict[str, str] = {}
    if cache is not None:
        mid = model_identity(model)
        for n, (w, t_eff) in todo.items():
            if t_eff == 0:
                continue
            keys[n] = cache_key(model_id=mid, target=n, shape=tuple(w.shape), weight_dtype=w.dtype,
                                fingerprint=weight_fingerprint(w), truncation=c.truncation, t=t_eff,
                                svd_method=c.svd_method, svd_dtype=c.svd_dtype,
                                calibration=weight_fingerprint(scales[n]) if aware else None)
            hit = cache.get(keys[n], w.shape[0], w.shape[1], t_eff)
            if hit is not None:
                removed[n] = (hit[0].to(w.device), hit[1].to(w.device))

    groups: dict[tuple, list[str]] = {}
    for n, (w, t_eff) in todo.items():
        if t_eff == 0:
            removed[n] = (w.new_zeros(w.shape[0], 0, dtype=dtype), w.new_zeros(0, w.shape[1], dtype=dtype))
        elif n not in removed:
            groups.setdefault((tuple(w.shape), w.device, t_eff), []).append(n)
    for (shape, device, t_eff), members in groups.items():
        cap = _BATCH_BYTES.get(device.type, _BATCH_BYTES["cpu"])
        per = max(1, cap // (8 * shape[0] * shape[1]))
        for i in range(0, len(members), per):
            chunk = members[i:i + per]
            stack = torch.stack([todo[n][0].detach() for n in chunk])
            if aware:
                US, Vh = activation_aware_triplets(stack, torch.stack([scales[n] for n in chunk]), t_eff,
                                                   c.svd_method)
                US, Vh = US.to(dtype), Vh.to(dtype)
            else:
                U, S, Vh, _used = batched_smallest_triplets(stack, t_eff, dtype, c.svd_method)
                US = U * S[:, None, :]
            for j, n in enumerate(chunk):
                removed[n] = (US[j], Vh[j])
                if cache is not None:
                    cache.put(keys[n], *removed[n])
    return removed


class KasaLayer(LoraLayer):
    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float, use_rslora: bool,
                 truncation: str, truncation_rank: int, singular_values: str, svd_dtype_name: str,
                 name: str = "", removed: tuple[torch.Tensor, torch.Tensor] | None = None,
                 svd_method: str = "auto", keep_removed: bool = False, input_scale: torch.Tensor | None = None, *,
                 autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, r, alpha, dropout, use_rslora, name=name,
                         autocast_adapter_dtype=autocast_adapter_dtype)
        w = base_layer.weight
        self.truncation = truncation
        if truncation == "activation_aware":
            if removed is None or input_scale is None:
                raise MethodError(f"kasa truncation=activation_aware: no calibration statistics for '{name}' "
                                  "(build the layers through Kasa.apply with calibration data)")
            # saved with the adapter: a reload re-derives the same truncation without calibration data
            self.register_buffer("kasa_input_scale", input_scale.detach().float().to(w.device))
        if singular_values == "learnable":
            self.lora_diag = nn.Parameter(torch.randn(r, dtype=self.adapter_dtype, device=w.device))
        else:
            self.lora_diag = None
        t = truncation_rank
        if truncation != "none":
            check_rank(name, t, self.out_features, self.in_features, what="truncation_rank")
        keep = kept_components(self.out_features, self.in_features, t, truncation)
        t_eff = min(self.out_features, self.in_features) - keep
        self.removed_rank = t_eff  # how many smallest triplets were truncated (kept even without the buffers)
        if removed is None:
            U, S, Vh = smallest_triplets(get_weight(base_layer), t_eff, svd_dtype(svd_dtype_name), svd_method)
            removed = (U * S, Vh)
        us, vh = removed
        # The removed singular values (U_t S_t has orthogonal columns of norm s_i): t floats, kept in every
        # mode so spectra of W can be rebuilt (kasa.analysis.spectra); derived, so not saved with the adapter.
        # activation_aware: singular values of W diag(s), not of W.
        self.register_buffer("kasa_removed_s", us.float().norm(dim=0).to(w.device), persistent=False)
        # float32 at least: these reproduce W exactly (export, reload onto a fresh base).
        self.register_buffer("kasa_removed_us",
                             us.to(device=w.device, dtype=torch.promote_types(us.dtype, torch.float32)))
        self.register_buffer("kasa_removed_vh",
                             vh.to(device=w.device, dtype=torch.promote_types(vh.dtype, torch.float32)))
        self._subtract_removed(sign=-1.0)
        if not keep_removed:
            # Memory as HF PEFT's KaSA: no export_lora, no re-truncation from a saved adapter
            # (a fresh `apply` re-derives the same truncation deterministically).
            self.kasa_removed_us = self.kasa_removed_vh = None

    @torch.no_grad()
    def _subtract_removed(self, sign: float) -> None:
        """``W += sign * U_t S_t V_t^T`` (sign -1 truncates, +1 restores)."""
        if self.kasa_removed_us.shape[1] == 0:
            return
        w = get_weight(self.base_layer)
        part = self.kasa_removed_us @ self.kasa_removed_vh
        set_weight(self.base_layer, w.to(part.dtype) + sign * part)

    @torch.no_grad()
    def replace_removed(self, us: torch.Tensor, vh: torch.Tensor) -> None:
        """Re-truncate with another removed part (loading an adapter saved from a different SVD)."""
        if self.kasa_removed_us is None:
            raise MethodError("this KaSA model was built with keep_removed=false: it cannot take the removed "
                              "factors of a saved adapter (rebuild with keep_removed=true)")
        if (us.shape == self.kasa_removed_us.shape and torch.equal(us.to(self.kasa_removed_us), self.kasa_removed_us)
                and torch.equal(vh.to(self.kasa_removed_vh), self.kasa_removed_vh)):
            return
        self._subtract_removed(sign=+1.0)
        self.kasa_removed_us = us.to(self.kasa_removed_us)
        self.kasa_removed_vh = vh.to(self.kasa_removed_vh)
        self.kasa_removed_s = self.kasa_removed_us.float().norm(dim=0)
        self._subtract_removed(sign=-1.0)

    def _middle(self) -> torch.Tensor | float:
        return self.lora_diag * self.scaling if self.lora_diag is not None else self.scaling

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lora_dropout(x).to(self.lora_A.dtype)
        return F.linear(F.linear(x, self.lora_A) * self._middle(), self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        mid = self._middle()
        mid = mid.float() if isinstance(mid, torch.Tensor) else mid
        return (self.lora_B.float() * mid) @ self.lora_A.float()

    # -- regularisers ---------------------------------------------------------------------------
    def l2(self) -> torch.Tensor:
        if self.lora_diag is None:
            return self.lora_A.new_zeros((), dtype=torch.float32)
        return self.lora_diag.float().pow(2).sum()

    def l3_paper(self) -> torch.Tensor:
        A, B = self.lora_A.float(), self.lora_B.float()
        eye = torch.eye(self.r, device=A.device, dtype=A.dtype)
        return torch.linalg.norm(B.T @ B - eye) + torch.linalg.norm(A @ A.T - eye)

    def l3_reference(self) -> torch.Tensor:
        # ||M^T M - I_n||_F^2 = ||M M^T||_F^2 - 2 ||M||_F^2 + n for M with n columns: only r x r Grams needed.
        # float64 because the three terms are O(n) and cancel.
        A, B = self.lora_A.double(), self.lora_B.double()

        def off_identity(m_rows_r: torch.Tensor, n: int) -> torch.Tensor:
            gram = m_rows_r @ m_rows_r.T  # r x r
            sq = gram.pow(2).sum() - 2 * m_rows_r.pow(2).sum() + n
            return sq.clamp_min(0).sqrt()

        return (off_identity(A, self.in_features) + off_identity(B.T, self.out_features)).float()


def _batched_l2(layers: list[KasaLayer]) -> torch.Tensor:
    """``sum over layers ||dsigma||^2`` in one reduction per device."""
    diags: dict[torch.device, list[torch.Tensor]] = {}
    for m in layers:
        if m.lora_diag is not None:
            diags.setdefault(m.lora_diag.device, []).append(m.lora_diag.float())
    if not diags:
        return layers[0].lora_A.new_zeros((), dtype=torch.float32)
    parts = [torch.cat(ds).pow(2).sum() for ds in diags.values()]
    return parts[0] if len(parts) == 1 else sum(p.to(parts[0].device) for p in parts)


def _batched_l3(layers: list[KasaLayer], form: str) -> torch.Tensor:
    """``sum over layers`` of :meth:`KasaLayer.l3_paper` (or ``l3_reference``), reduced in batched calls.

    Each factor becomes the ``r x r`` Gram of its rows (``A A^T`` for ``lora_A``, ``B^T B`` for ``lora_B``),
    one small matmul per factor whose backward saves only the parameter itself (stacking the factors
    first would save a copy of every adapter for backward: memory LoRA does not pay). The Grams are then
    stacked and reduced at once: paper ``||G - I_r||_F``; reference ``||M^T M - I_n||_F`` via
    ``||G||_F^2 - 2 ||M||_F^2 + n`` in float64, as the per-layer methods compute them.
    """
    dtype = torch.float32 if form == "paper" else torch.float64
    groups: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for m in layers:
        for rows in (m.lora_A, m.lora_B.T):  # both as (r, n)
            rows = rows.to(dtype)
            groups.setdefault((rows.shape[-1], rows.device), []).append((rows @ rows.T, rows))
    parts = []
    for (n, _dev), items in groups.items():
        gram = torch.stack([g for g, _ in items])  # (g, r, r)
        if form == "paper":
            eye = torch.eye(gram.shape[-1], device=gram.device, dtype=dtype)
            parts.append(torch.linalg.matrix_norm(gram - eye).sum())
        else:
            sq_norms = torch.stack([r_.pow(2).sum() for _, r_ in items])
            sq = gram.pow(2).sum((-2, -1)) - 2 * sq_norms + n
            parts.append(sq.clamp_min(0).sqrt().sum())
    dev = parts[0].device
    return sum(p.to(dev) for p in parts).float()


@dataclass
class KasaConfig(LoraConfigBase):
    beta: float = 1e-4  # weight of L2 = sum ||dsigma||^2
    gamma: float = 1e-3  # weight of L3, the orthogonality of dU and dV
    truncation: str = "paper"  # paper | reference | none | activation_aware (W diag(rms(x)), beyond the paper)
    truncation_rank: int | None = None  # triplets dropped from W; defaults to r
    singular_values: str = "learnable"  # learnable | off
    regularizer: str = "paper"  # paper (r x r, summed) | reference (in x in / out x out, averaged)
    svd_dtype: str = "float32"  # float32 | float64 (dtype of the SVD in `svd` mode and of the stored factors)
    svd_method: str = "auto"  # auto (float64 Gram fast path, full SVD where inaccurate) | gram | svd
    truncation_cache: str | None = None  # directory caching the removed factors; env KASA_TRUNCATION_CACHE
    # true: keep U_t S_t, V_t^T as buffers (export_lora, exact reload); false: PEFT-like memory
    keep_removed: bool = False
    calibration_samples: int = 256  # activation_aware: sequences whose inputs give the per-channel RMS (as CorDA)


@register("kasa")
class Kasa(PeftMethod):
    config_cls = KasaConfig
    paper_order = 16
    export_formats = ("peft", "lora", "merged")
    peft_type = "LORA"
    loraplus_b_params = ("lora_B",)  # dU: LoRA+ trains it at lr * loraplus_lr_ratio

    @property
    def decomposes_weights(self) -> bool:  # type: ignore[override]
        """The truncation decomposes W (``truncation=none``, or a zero ``truncation_rank``, reads no spectrum)."""
        c = self.config
        return c.truncation != "none" and (c.truncation_rank is None or c.truncation_rank > 0)

    def validate(self) -> None:
        c = self.config
        for field_name, value, allowed in (("truncation", c.truncation, TRUNCATIONS),
                                           ("singular_values", c.singular_values, SINGULAR_VALUES),
                                           ("regularizer", c.regularizer, REGULARIZERS)):
            if value not in allowed:
                raise MethodError(f"kasa {field_name}='{value}' is unknown; choose one of {list(allowed)}")
        svd_dtype(c.svd_dtype)
        try:
            check_svd_method(c.svd_method)
        except ValueError as e:
            raise MethodError(f"kasa {e}") from None
        if c.r < 1:
            raise MethodError(f"kasa r={c.r} must be at least 1")
        if c.calibration_samples < 1:
            raise MethodError(f"kasa calibration_samples={c.calibration_samples} must be at least 1")

    def __init__(self, config: KasaConfig):
        super().__init__(config)
        self.input_scales: dict[str, torch.Tensor] | None = None  # activation_aware: per-channel input RMS

    @property
    def needs_calibration(self) -> bool:
        """Whether :meth:`apply` needs calibration batches (``truncation=activation_aware``)."""
        return self.config.truncation == "activation_aware"

    def calibrate(self, model: nn.Module, batches: Iterable[Any], max_samples: int | None = None
                  ) -> dict[str, torch.Tensor]:
        """Store the per-input-channel RMS of every target layer of the un-adapted ``model`` over ``batches``
        (at most ``max_samples`` sequences, default ``calibration_samples``); see :func:`input_rms`."""
        targets = self.targets(model)
        names = [n for n, _ in model.named_modules() if n and match_target(n, targets)]
        if not names:
            raise MethodError(f"kasa: target_modules={targets!r} match no module of {type(model).__name__}")
        # The global RNG is left as it was: iterating a DataLoader draws from it, and the adapter's initialisation
        # (dV^T, dsigma) must be the same draw as with the paper's truncation for the same seed (paired comparisons).
        with torch.random.fork_rng(devices=[]):
            self.input_scales = input_rms(model, names, batches,
                                          self.config.calibration_samples if max_samples is None else max_samples)
        return self.input_scales

    def apply(self, model: nn.Module, calibration: Iterable[Any] | None = None,
              adapter_state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Truncate and wrap the targets (in place; returns ``model``).

        ``truncation=activation_aware`` needs the input statistics first: ``calibration`` batches (or an earlier
        :meth:`calibrate`), or ``adapter_state_dict``, a saved adapter whose ``kasa_input_scale`` buffers
        re-derive the same truncation (the adapter is then loaded too). Other truncations ignore ``calibration``.
        """
        if self.needs_calibration:
            if adapter_state_dict is not None:
                suffix = ".kasa_input_scale"
                self.input_scales = {k[: -len(suffix)]: v for k, v in adapter_state_dict.items() if k.endswith(suffix)}
            elif calibration is not None:
                self.calibrate(model, calibration)
            elif self.input_scales is None and self.count_only:  # parameter counting: shapes only
                self.input_scales = {n: torch.ones(get_weight(m).shape[1], device=get_weight(m).device)
                                     for n, m in model.named_modules() if n and match_target(n, self.targets(model))}
            elif self.input_scales is None:
                raise MethodError("kasa truncation=activation_aware needs calibration data: method.apply(model, "
                                  "calibration=batches), method.calibrate(model, batches) first, or "
                                  "method.apply(model, adapter_state_dict=sd) to rebuild a saved adapter")
        try:
            super().apply(model)
        finally:
            self.input_scales = None  # statistics of this model only: never reused on another one
        if adapter_state_dict is not None:
            self.load_adapter_state_dict(model, adapter_state_dict)
        return model

    @property
    def truncation_rank(self) -> int:
        return self.config.truncation_rank if self.config.truncation_rank is not None else self.config.r

    def before_wrap(self, model: nn.Module, names: list[str]) -> None:
        """Compute every target's removed factors up front: shape errors first, then the on-disk cache,
        then one batched decomposition per group of same-shaped weights (see :mod:`kasa.methods.svd`)."""
        self._removed = compute_removed(model, names, self.config, self.truncation_rank, self.input_scales)

    def wrap(self, name: str, module: nn.Module) -> KasaLayer:
        c = self.config
        removed = getattr(self, "_removed", {}).pop(name, None)
        scale = (self.input_scales or {}).get(name) if self.needs_calibration else None
        return KasaLayer(module, c.r, c.alpha, c.dropout, c.use_rslora, c.truncation, self.truncation_rank,
                         c.singular_values, c.svd_dtype, name=name, removed=removed, svd_method=c.svd_method,
                         keep_removed=c.keep_removed, input_scale=scale,
                         autocast_adapter_dtype=c.autocast_adapter_dtype)

    def regularization_loss(self, model: nn.Module) -> torch.Tensor:
        c = self.config
        layers = [m for m in self.adapter_layers(model) if isinstance(m, KasaLayer)]
        if not layers or (c.beta == 0 and c.gamma == 0):
            return super().regularization_loss(model)
        # Batched over same-shaped layers: the per-layer loop (KasaLayer.l2 / l3_*) costs ~40 tiny kernels
        # per layer and dominated KaSA's extra step time where launches or Python overhead dominate
        # (small batches, 7B models with 160 adapted layers). Same values up to summation order.
        total = 0.0
        if c.beta != 0:
            total = total + c.beta * _batched_l2(layers)
        if c.gamma != 0:
            total = total + c.gamma * _batched_l3(layers, c.regularizer)
        if c.regularizer == "reference":
            total = total / len(layers)
        return total

    def regularization_terms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Unweighted L2 and L3 sums (for logging)."""
        layers = [m for m in self.adapter_layers(model) if isinstance(m, KasaLayer)]
        if not layers:
            return {}
        with torch.no_grad():  # the same batched reductions training uses
            return {"l2": _batched_l2(layers), "l3": _batched_l3(layers, self.config.regularizer)}

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
        """As the base class; removed factors saved by a ``keep_removed=true`` run are dropped for layers built
        without them, and a ``keep_removed=false`` adapter loaded into layers built with them keeps the layers' own
        (either way the truncation was re-derived by ``apply`` from the same base weights)."""
        layers = {n: m for n, m in model.named_modules() if isinstance(m, KasaLayer)}
        lean = {f"{n}.{b}" for n, m in layers.items() if m.kasa_removed_us is None
                for b in ("kasa_removed_us", "kasa_removed_vh")}
        sd = {k: v for k, v in state_dict.items() if k not in lean}
        for n, m in layers.items():
            if m.kasa_removed_us is not None and f"{n}.kasa_removed_us" not in sd and f"{n}.kasa_removed_vh" not in sd:
                sd[f"{n}.kasa_removed_us"], sd[f"{n}.kasa_removed_vh"] = m.kasa_removed_us, m.kasa_removed_vh
        return super().load_adapter_state_dict(model, sd)

    def before_load(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        for lname, layer in model.named_modules():
            saved_scale = state_dict.get(f"{lname}.kasa_input_scale")
            own_scale = getattr(layer, "kasa_input_scale", None)
            # a resume recalibrates on the same batches: equal up to the last bits of another machine's kernels
            if (isinstance(layer, KasaLayer) and layer.kasa_removed_us is None and saved_scale is not None
                    and own_scale is not None and not torch.allclose(saved_scale.to(own_scale), own_scale,
                                                                     rtol=1e-4, atol=1e-7 * float(own_scale.max()))):
                raise MethodError(f"kasa: '{lname}' was truncated with other calibration statistics than the saved "
                                  "adapter's; rebuild with method.apply(fresh_model, adapter_state_dict=sd)")
            # keep_removed=false: apply already re-derived the same truncation; saved factors are not needed
            if isinstance(layer, KasaLayer) and layer.kasa_removed_us is not None:
                us, vh = state_dict.get(f"{lname}.kasa_removed_us"), state_dict.get(f"{lname}.kasa_removed_vh")
                if us is not None and vh is not None:
                    layer.replace_removed(us, vh)

    def export_lora(self, model: nn.Module) -> tuple[PeftMethod, dict[str, torch.Tensor]]:
        """An exact plain LoRA on the ORIGINAL base: ``W' - W = -U_t S_t V_t^T + scaling dU diag(ds) dV^T``.

        Returns ``(lora_method, state_dict)``: ``lora_method.apply(original_model)`` then
        ``lora_method.load_adapter_state_dict(original_model, state_dict)`` reproduces the KaSA model.
        The rank is ``t + r`` (padded with zero columns where a layer dropped fewer than ``t``) and the
        LoRA scaling is 1. Task-head parameters are carried over as they are.
        """
        from .lora import Lora, LoraConfig

        layers = {n: m for n, m in model.named_modules() if isinstance(m, KasaLayer)}
        if any(m.kasa_removed_us is None for m in layers.values()):
            raise MethodError("export_lora needs the removed singular triplets: build KaSA with keep_removed=true")
        rank = max(m.kasa_removed_us.shape[1] for m in layers.values()) + self.config.r
        sd: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, m in layers.items():
                mid = m._middle()
                B_scaled = m.lora_B.float() * (mid.float() if isinstance(mid, torch.Tensor) else mid)
                B = torch.cat([-m.kasa_removed_us.float(), B_scaled], dim=1)
                A = torch.cat([m.kasa_removed_vh.float(), m.lora_A.float()], dim=0)
                pad = rank - B.shape[1]
                if pad:
                    B = torch.cat([B, B.new_zeros(B.shape[0], pad)], dim=1)
                    A = torch.cat([A, A.new_zeros(pad, A.shape[1])], dim=0)
                sd[f"{n}.lora_A"] = A.to(m.lora_A.dtype)
                sd[f"{n}.lora_B"] = B.to(m.lora_B.dtype)
        adapter_keys = {f"{n}.{p}" for n in layers for p in ("lora_A", "lora_B", "lora_diag", "kasa_removed_us",
                                                            "kasa_removed_vh", "kasa_input_scale")}
        for k, v in self.adapter_state_dict(model).items():
            if k not in adapter_keys:
                sd[k] = v
        lora = Lora(LoraConfig(r=rank, alpha=float(rank), dropout=self.config.dropout,
                               target_modules=sorted(layers), modules_to_save=self.config.modules_to_save))
        return lora, sd
