"""PiSSA (Meng et al., 2024, arXiv 2404.02948) and the shared machinery of residual-base LoRA inits.

PiSSA initialises LoRA from the ``r`` PRINCIPAL singular triplets of ``W = U S V^T``:
``A = sqrt(S_r / scaling) V_r^T``, ``B = U_r sqrt(S_r / scaling)``, so that ``scaling * B A = U_r S_r V_r^T``
(the division by ``scaling`` is HF PEFT's convention, which keeps the init independent of alpha), and
replaces the frozen base by the residual ``W - scaling * B A``. The model's output is unchanged at init.
``niter`` switches to the fast randomized SVD (``torch.svd_lowrank(W, q=r, niter=niter)``; HF PEFT's
``init_lora_weights="pissa_niter_N"``).

:class:`ResidualLoraLayer` and :class:`ResidualLoraMethod` are shared with MiLoRA (minor triplets,
:mod:`kasa.methods.milora`) and CorDA (covariance-oriented triplets, :mod:`kasa.methods.corda`): the initial
factors are kept as buffers (``residual_init_A`` / ``residual_init_B``), so a saved adapter re-derives the
residual of a fresh base exactly, whatever SVD produced it (randomized, other device, other calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .config import LoraConfigBase
from .errors import MethodError
from .lora import LoraLayer
from .method import PeftMethod, check_rank, lora_scaling
from .registry import register
from .svd import principal_triplets, smallest_triplets, svd_dtype
from .weights import get_weight, set_weight

COMPONENTS = ("principal", "minor")


def factors_from_triplets(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, scaling: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors ``(A, B)`` with ``scaling * B @ A = U diag(S) Vh`` and the singular values split evenly."""
    root = (S / scaling).sqrt()
    return root[:, None] * Vh, U * root[None, :]


class ResidualLoraLayer(LoraLayer):
    """LoRA started from given factors ``(A0, B0)`` on the residual base ``W - scaling * B0 @ A0``.

    ``A0``/``B0`` stay as float32 (or wider) buffers: they are saved with the adapter, let
    :meth:`replace_init` move a fresh base onto the same residual, and give the exact export to a plain LoRA
    on the original weights.
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float, use_rslora: bool,
                 init_A: torch.Tensor, init_B: torch.Tensor, name: str = "", *, autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, r, alpha, dropout, use_rslora, name=name,
                         autocast_adapter_dtype=autocast_adapter_dtype)
        if init_A.shape != (r, self.in_features) or init_B.shape != (self.out_features, r):
            raise MethodError(
                f"initial factors of '{name}' have shapes {tuple(init_A.shape)} / {tuple(init_B.shape)}; "
                f"expected ({r}, {self.in_features}) / ({self.out_features}, {r})"
            )
        w = base_layer.weight
        buf = torch.promote_types(init_A.dtype, torch.float32)
        self.register_buffer("residual_init_A", init_A.detach().to(device=w.device, dtype=buf).contiguous())
        self.register_buffer("residual_init_B", init_B.detach().to(device=w.device, dtype=buf).contiguous())
        with torch.no_grad():
            self.lora_A.copy_(self.residual_init_A)
            self.lora_B.copy_(self.residual_init_B)
        self._shift_base(sign=-1.0)

    def removed_part(self) -> torch.Tensor:
        """``scaling * B0 @ A0``: what the base lost at init (out x in, float32 or wider)."""
        return (self.scaling * self.residual_init_B) @ self.residual_init_A

    @torch.no_grad()
    def _shift_base(self, sign: float) -> None:
        """``W += sign * scaling * B0 A0`` (-1 makes the residual, +1 restores the original)."""
        part = self.removed_part()
        w = get_weight(self.base_layer)
        set_weight(self.base_layer, w.to(part.dtype) + sign * part)

    @torch.no_grad()
    def replace_init(self, init_A: torch.Tensor, init_B: torch.Tensor) -> None:
        """Move the base onto the residual of other initial factors (loading an adapter made elsewhere)."""
        same = (init_A.shape == self.residual_init_A.shape and init_B.shape == self.residual_init_B.shape
                and torch.equal(init_A.to(self.residual_init_A), self.residual_init_A)
                and torch.equal(init_B.to(self.residual_init_B), self.residual_init_B))
        if same:
            return
        if init_A.shape != self.residual_init_A.shape or init_B.shape != self.residual_init_B.shape:
            raise MethodError(
                f"saved initial factors have shapes {tuple(init_A.shape)} / {tuple(init_B.shape)}; this layer has "
                f"{tuple(self.residual_init_A.shape)} / {tuple(self.residual_init_B.shape)} (different r?)"
            )
        self._shift_base(sign=+1.0)
        self.residual_init_A = init_A.to(self.residual_init_A)
        self.residual_init_B = init_B.to(self.residual_init_B)
        self._shift_base(sign=-1.0)


class ResidualLoraMethod(PeftMethod):
    """Base of the methods whose layers are :class:`ResidualLoraLayer` (PiSSA, MiLoRA, CorDA).

    Subclasses implement :meth:`initial_triplets`; the factors, residual, loading and export are shared.
    """

    decomposes_weights = True

    def validate(self) -> None:
        c = self.config
        if c.r < 1:
            raise MethodError(f"{self.name} r={c.r} must be at least 1")
        try:
            svd_dtype(getattr(c, "svd_dtype", "float32"))
        except ValueError as e:
            raise MethodError(f"{self.name}: {e}") from None

    @property
    def alpha(self) -> float:
        """``config.alpha``, or ``r`` where the config leaves it ``None`` (MiLoRA's authors set alpha = r)."""
        return float(self.config.alpha) if self.config.alpha is not None else float(self.config.r)

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.config.r, self.config.use_rslora)

    def initial_triplets(self, name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, S, Vh)`` with ``U``: out x r, ``S``: r, ``Vh``: r x in; the adapter starts as their product."""
        raise NotImplementedError

    def wrap(self, name: str, module: nn.Module) -> ResidualLoraLayer:
        c = self.config
        out_f, in_f = get_weight(module).shape
        check_rank(name, c.r, out_f, in_f)  # before the SVD: a clear error, not a shape mismatch later
        U, S, Vh = self.initial_triplets(name, module)
        A, B = factors_from_triplets(U, S, Vh, self.scaling)
        return ResidualLoraLayer(module, c.r, self.alpha, c.dropout, c.use_rslora, A, B, name=name,
                                 autocast_adapter_dtype=c.autocast_adapter_dtype)

    def before_load(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        for lname, layer in model.named_modules():
            if isinstance(layer, ResidualLoraLayer):
                A0 = state_dict.get(f"{lname}.residual_init_A")
                B0 = state_dict.get(f"{lname}.residual_init_B")
                if A0 is not None and B0 is not None:
                    layer.replace_init(A0, B0)

    def export_lora(self, model: nn.Module) -> tuple[PeftMethod, dict[str, torch.Tensor]]:
        """An exact plain LoRA on the ORIGINAL base: ``W' - W = scaling * (B A - B0 A0)``, rank ``2 r``, scaling 1.

        Returns ``(lora_method, state_dict)`` to ``apply`` and ``load_adapter_state_dict`` on the original model.
        Task-head parameters are carried over as they are.
        """
        from .lora import Lora, LoraConfig

        layers = {n: m for n, m in model.named_modules() if isinstance(m, ResidualLoraLayer)}
        sd: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, m in layers.items():
                B = torch.cat([m.scaling * m.lora_B.float(), -m.scaling * m.residual_init_B.float()], dim=1)
                A = torch.cat([m.lora_A.float(), m.residual_init_A.float()], dim=0)
                sd[f"{n}.lora_A"] = A.to(m.lora_A.dtype)
                sd[f"{n}.lora_B"] = B.to(m.lora_B.dtype)
        own = {f"{n}.{p}" for n in layers for p in ("lora_A", "lora_B", "residual_init_A", "residual_init_B")}
        for k, v in self.adapter_state_dict(model).items():
            if k not in own:
                sd[k] = v
        rank = 2 * self.config.r
        lora = Lora(LoraConfig(r=rank, alpha=float(rank), dropout=self.config.dropout,
                               target_modules=sorted(layers), modules_to_save=self.config.modules_to_save))
        return lora, sd


def svd_triplets(weight: torch.Tensor, r: int, components: str, dtype: torch.dtype,
                 niter: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``r`` principal or minor singular triplets ``(U_r, S_r, Vh_r)`` of an (out x in) weight.

    ``niter`` (principal only): randomized SVD, ``torch.svd_lowrank(W, q=r, niter=niter)``, as HF PEFT's
    ``pissa_niter_N``; it draws from torch's global RNG.
    """
    if components == "minor":
        if niter is not None:
            raise MethodError("randomized SVD (niter) finds principal components only; minor ones need the full SVD")
        return smallest_triplets(weight, r, dtype)
    if niter is None:
        return principal_triplets(weight, r, dtype)
    U, S, V = torch.svd_lowrank(weight.detach().to(dtype), q=r, niter=niter)
    return U, S, V.T


@dataclass
class SvdInitConfig(LoraConfigBase):
    svd_dtype: str = "float32"  # float32 | float64


@dataclass
class PissaConfig(SvdInitConfig):
    alpha: float = 8.0  # PiSSA sets lora_alpha = r (scaling 1)
    niter: int | None = None  # None: full SVD; N: torch.svd_lowrank with N subspace iterations


class SvdInitMethod(ResidualLoraMethod):
    """Adapter from ``components`` (principal | minor) singular triplets of the weight, residual base."""

    components: ClassVar[str] = "principal"

    def validate(self) -> None:
        super().validate()
        if self.components not in COMPONENTS:
            raise MethodError(f"{self.name}: components='{self.components}' is unknown; "
                              f"choose one of {list(COMPONENTS)}")
        niter = getattr(self.config, "niter", None)
        if niter is not None:
            if niter < 0:
                raise MethodError(f"{self.name} niter={niter} must be >= 0 (or None for the full SVD)")
            if self.components != "principal":
                raise MethodError(f"{self.name} niter={niter}: randomized SVD finds principal components only")

    def initial_triplets(self, name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return svd_triplets(get_weight(module), self.config.r, self.components, svd_dtype(self.config.svd_dtype),
                            getattr(self.config, "niter", None))


@register("pissa")
class Pissa(SvdInitMethod):
    """PiSSA: principal singular components init, residual base."""

    config_cls = PissaConfig
    paper_order = 12
    export_formats = ("peft", "lora", "merged")
    peft_type = "LORA"
    loraplus_b_params = ("lora_B",)
    components = "principal"
