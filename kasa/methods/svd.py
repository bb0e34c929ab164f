"""Singular-value helpers shared by the SVD-based methods (KaSA, PiSSA, MiLoRA, ...)."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def svd_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"svd_dtype='{name}' is not supported; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def smallest_triplets(weight: torch.Tensor, t: int, dtype: torch.dtype = torch.float32
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``t`` smallest singular triplets of an (out x in) ``weight`` as ``(U_t, S_t, Vh_t)``.

    Computed in ``dtype`` (float32 at least) whatever the weight's dtype; ``t = 0`` gives empty factors.
    Ordered as ``torch.linalg.svd`` orders them (descending singular values).
    """
    out_f, in_f = weight.shape
    w = weight.detach().to(dtype)
    if t == 0:
        return (w.new_zeros(out_f, 0), w.new_zeros(0), w.new_zeros(0, in_f))
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    k = S.shape[0]
    return U[:, k - t:], S[k - t:], Vh[k - t:, :]


def principal_triplets(weight: torch.Tensor, r: int, dtype: torch.dtype = torch.float32
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``r`` largest singular triplets ``(U_r, S_r, Vh_r)`` of an (out x in) ``weight``."""
    U, S, Vh = torch.linalg.svd(weight.detach().to(dtype), full_matrices=False)
    return U[:, :r], S[:r], Vh[:r, :]
