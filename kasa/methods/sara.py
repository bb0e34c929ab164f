"""SARA (Gu et al., 2024, arXiv 2408.03290): a per-layer rank read off the pretrained weight's spectrum.

**Threshold unverified**: only the opening of arXiv 2408.03290 (its HTML version's abstract and Figure 1
caption) was reachable here, not its method section nor the authors' code. That caption fixes the rule's form:
``k`` is the number of leading singular values whose share of the plain sum of all singular values reaches a
threshold (``energy="sum"`` below, the default). The ``threshold=0.5`` default, the adapter's initialisation and
``energy="squared"`` come from secondary descriptions and are written out exactly as implemented;
``python -m kasa.params`` and ``kasa-report`` repeat :data:`UNVERIFIED_NOTE` wherever SARA's numbers appear.

Rank rule, for a frozen (out x in) weight ``W = U diag(s) V^T``, ``s`` descending,
``k_max = min(out, in)``:

    k = min{ k >= 1 : sum_{i <= k} e_i >= threshold * sum_{i <= k_max} e_i },   e_i = s_i   (``energy="sum"``)
                                                                                   e_i = s_i^2 (``energy="squared"``)

then clamped to ``[min_rank, max_rank]`` (and to ``k_max``). ``threshold`` is a fraction in (0, 1].

Adapter: ``y = W x + U_k diag(lambda) V_k^T dropout(x)``, initialised from the principal components
(``lora_B = U_k``, ``lora_A = V_k^T``, orthonormal) with a trainable singular-value vector ``lambda``
(``lora_diag``, init 0, so the model is unchanged at step 0; the base weight is NOT modified). With
``train_vectors`` (default) ``U_k`` and ``V_k`` train too; without it only ``lambda`` trains and ``U_k``/``V_k``
are buffers saved with the adapter. Mo-SARA (several singular-value vectors mixed by a router) is not
implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MethodConfig
from .errors import MethodError
from .layer import AdapterLayer
from .method import PeftMethod
from .registry import register
from .svd import svd_dtype
from .weights import get_weight

ENERGIES = ("sum", "squared")
# Said under every parameter table and report caption with a SARA row (see the module docstring).
UNVERIFIED_NOTE = ("sara: threshold unverified (arXiv 2408.03290's Figure 1 fixes the rule's form, a share of the sum "
                   "of singular values, not its threshold; kasa/methods/sara.py)")


def sara_rank(s: torch.Tensor, threshold: float, energy: str = "sum", min_rank: int = 1,
              max_rank: int | None = None) -> int:
    """The rank SARA picks for singular values ``s`` (descending): see the module docstring."""
    e = s.double() if energy == "sum" else s.double() ** 2
    cum = torch.cumsum(e, 0)
    # smallest k whose top-k share reaches the threshold (a relative tolerance absorbs rounding at exactly 1)
    target = threshold * cum[-1] * (1 - 1e-12)
    k = int((cum < target).sum()) + 1
    k = max(k, min_rank)
    if max_rank is not None:
        k = min(k, max_rank)
    return min(k, s.numel())


class SaraLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Module, threshold: float, energy: str, min_rank: int,
                 max_rank: int | None, train_vectors: bool, dropout: float = 0.0, svd_dtype_name: str = "float32",
                 *, autocast_adapter_dtype: bool = True):
        super().__init__(base_layer, autocast_adapter_dtype=autocast_adapter_dtype)
        w = base_layer.weight
        if w.is_meta:
            raise MethodError("SARA's per-layer rank depends on the pretrained spectrum: it cannot be chosen on "
                              "meta tensors (load real weights)")
        U, S, Vh = torch.linalg.svd(get_weight(base_layer).detach().to(svd_dtype(svd_dtype_name)), full_matrices=False)
        k = sara_rank(S, threshold, energy, min_rank, max_rank)
        self.r = k
        self.train_vectors = train_vectors
        B, A = U[:, :k].to(self.adapter_dtype), Vh[:k].to(self.adapter_dtype)
        if train_vectors:
            self.lora_B = nn.Parameter(B.contiguous())
            self.lora_A = nn.Parameter(A.contiguous())
        else:
            self.register_buffer("lora_B", B.contiguous())
            self.register_buffer("lora_A", A.contiguous())
        self.lora_diag = nn.Parameter(torch.zeros(k, dtype=self.adapter_dtype, device=w.device))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lora_dropout(x).to(self.lora_A.dtype)
        return F.linear(F.linear(x, self.lora_A) * self.lora_diag, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.float() * self.lora_diag.float()) @ self.lora_A.float()


@dataclass
class SaraConfig(MethodConfig):
    threshold: float = 0.5  # fraction of the spectrum's energy the chosen rank must reach
    energy: str = "sum"  # sum (of singular values, as the paper) | squared (Frobenius energy)
    min_rank: int = 1
    max_rank: int | None = None  # cap on the per-layer rank; None: no cap
    train_vectors: bool = True  # train U_k, V_k too (False: only the singular values)
    dropout: float = 0.0
    svd_dtype: str = "float32"  # float32 | float64


@register("sara")
class Sara(PeftMethod):
    decomposes_weights = True
    config_cls = SaraConfig
    paper_order = 11
    export_formats = ("lora", "merged")
    peft_type = None

    def validate(self) -> None:
        c = self.config
        if not 0 < c.threshold <= 1:
            raise MethodError(f"sara threshold={c.threshold} must lie in (0, 1]")
        if c.energy not in ENERGIES:
            raise MethodError(f"sara energy='{c.energy}' is unknown; choose one of {list(ENERGIES)}")
        if c.min_rank < 1 or (c.max_rank is not None and c.max_rank < c.min_rank):
            raise MethodError(f"sara needs 1 <= min_rank <= max_rank (got {c.min_rank}, {c.max_rank})")
        svd_dtype(c.svd_dtype)

    def wrap(self, name: str, module: nn.Module) -> SaraLayer:
        c = self.config
        return SaraLayer(module, c.threshold, c.energy, c.min_rank, c.max_rank, c.train_vectors, c.dropout,
                         c.svd_dtype, autocast_adapter_dtype=c.autocast_adapter_dtype)

    def ranks(self, model: nn.Module) -> dict[str, int]:
        """The rank chosen for every adapted layer."""
        return {n: m.r for n, m in model.named_modules() if isinstance(m, SaraLayer)}
