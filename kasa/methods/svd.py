"""Singular-value helpers shared by the SVD-based methods (KaSA, PiSSA, MiLoRA, ...).

KaSA only needs the ``t`` smallest singular triplets of each targeted weight, so besides the full SVD
there is a fast path (:func:`gram_smallest_triplets`): an eigendecomposition of the ``k x k`` Gram
matrix (``k = min(out, in)``) in float64, of which only the ``t + 1`` lowest eigenpairs are computed
on CPU (LAPACK ``syevr`` through SciPy), followed by one Rayleigh-Ritz step (a small ``t x in`` or
``out x t`` SVD) that gives orthonormal singular vectors and singular values computed from ``W``
itself rather than as ``sqrt`` of Gram eigenvalues.

Accuracy (why float64 and when to fall back): the Gram's eigenvector error is about
``eps64 * k * s_max^2 / (s_{t+1}^2 - s_t^2)``; the truncated weight ``W - U_t S_t V_t^T`` moves by that
angle times ``s_{t+1}``. The right vectors recovered from ``U_t^T W`` additionally lose a factor of
``(s_max / s_min)^2``. ``method="auto"`` estimates both and falls back to a float64 full SVD for a
weight whose spectrum makes the Gram path inaccurate (near-degenerate gap at the cut, or removed
singular values below ``GRAM_MIN_SV_RATIO * s_max``, e.g. rank-deficient weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
SVD_METHODS = ("auto", "gram", "svd")

# auto: fall back to a full SVD when the estimated relative error of the truncated weight exceeds this
# (the acceptance target is 1e-4; the estimate is a bound-like first-order figure, so keep a wide margin).
GRAM_MAX_REL_ERR = 1e-7
# auto: fall back when a removed singular value is below this fraction of s_max: the right vectors'
# error grows like eps64 * (s_max / s_min)^2, which reaches ~1e-6 here.
GRAM_MIN_SV_RATIO = 1e-5
_EPS64 = float(torch.finfo(torch.float64).eps)

try:  # LAPACK syevr with an index range: only the t+1 lowest eigenpairs, ~4/3 k^3 flops instead of ~9 k^3
    import scipy.linalg as _sla
except ImportError:  # pragma: no cover
    _sla = None


def svd_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"svd_dtype='{name}' is not supported; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def check_svd_method(name: str) -> str:
    if name not in SVD_METHODS:
        raise ValueError(f"svd_method='{name}' is unknown; choose one of {list(SVD_METHODS)}")
    return name


@dataclass
class GramReport:
    """What the Gram path measured for one weight: the error estimates behind ``auto``'s choice."""

    est_rel_err: float  # first-order estimate of ||W_trunc - W_trunc_exact||_F / ||W||_F
    sv_ratio: float  # smallest removed singular value / s_max
    used: str  # "gram" or "svd" (auto fell back)

    @property
    def accurate(self) -> bool:
        return self.est_rel_err <= GRAM_MAX_REL_ERR and self.sv_ratio >= GRAM_MIN_SV_RATIO


def _empty(weight: torch.Tensor, t: int, dtype: torch.dtype):
    out_f, in_f = weight.shape[-2:]
    lead = weight.shape[:-2]
    z = dict(dtype=dtype, device=weight.device)
    return (torch.zeros(*lead, out_f, 0, **z), torch.zeros(*lead, 0, **z), torch.zeros(*lead, 0, in_f, **z))


def smallest_triplets(weight: torch.Tensor, t: int, dtype: torch.dtype = torch.float32, method: str = "svd"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``t`` smallest singular triplets of an (out x in) ``weight`` as ``(U_t, S_t, Vh_t)``.

    ``method``: ``svd`` (full SVD computed in ``dtype``), ``gram`` (float64 Gram eigendecomposition, see
    the module docstring) or ``auto`` (gram, falling back to a float64 full SVD where inaccurate).
    Results are returned in ``dtype`` (float32 at least); ``t = 0`` gives empty factors. Ordered as
    ``torch.linalg.svd`` orders them (descending singular values); signs may differ between methods.
    """
    U, S, Vh, _ = batched_smallest_triplets(weight.unsqueeze(0), t, dtype, method)
    return U[0], S[0], Vh[0]


def batched_smallest_triplets(weights: torch.Tensor, t: int, dtype: torch.dtype = torch.float32,
                              method: str = "auto"
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """:func:`smallest_triplets` of a stack ``(b, out, in)`` of same-shaped weights in one call.

    Returns ``(U (b,out,t), S (b,t), Vh (b,t,in), used)`` where ``used[i]`` is ``"gram"`` or ``"svd"``.
    On CUDA the Gram eigendecompositions run as one batched ``torch.linalg.eigh``.
    """
    check_svd_method(method)
    dtype = torch.promote_types(dtype, torch.float32)
    b = weights.shape[0]
    if t == 0:
        return (*_empty(weights, t, dtype), ["svd"] * b)
    if method == "svd" or weights.device.type == "meta":
        # meta tensors (parameter counting) have no values to run the Gram path's accuracy checks on
        U, S, Vh = torch.linalg.svd(weights.detach().to(dtype), full_matrices=False)
        k = S.shape[-1]
        return U[..., k - t:], S[..., k - t:], Vh[..., k - t:, :], ["svd"] * b
    U, S, Vh, reports = gram_smallest_triplets(weights, t)
    used = []
    for i, rep in enumerate(reports):
        if method == "auto" and not rep.accurate:
            u, s, vh = _full_svd_smallest(weights[i], t)
            U[i], S[i], Vh[i] = u, s, vh
            rep.used = "svd"
        used.append(rep.used)
    return U.to(dtype), S.to(dtype), Vh.to(dtype), used


def _full_svd_smallest(weight: torch.Tensor, t: int):
    U, S, Vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    k = S.shape[-1]
    return U[:, k - t:], S[k - t:], Vh[k - t:, :]


def _lowest_eigenpairs(G: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` lowest eigenpairs of symmetric ``G`` (b, k, k) and the largest eigenvalue (b,)."""
    k = G.shape[-1]
    if G.device.type == "cpu" and _sla is not None:
        lams, vecs, lmax = [], [], []
        for g in G:
            g_np = g.numpy()
            try:
                lam, vec = _sla.eigh(g_np, subset_by_index=[0, n - 1], driver="evr", check_finite=False)
                lam, vec = torch.from_numpy(lam), torch.from_numpy(vec)
            except (_sla.LinAlgError, ValueError):  # syevr did not converge: the full divide-and-conquer solver
                lam_all, vec_all = torch.linalg.eigh(g)
                lam, vec = lam_all[:n], vec_all[:, :n]
            lams.append(lam)
            vecs.append(vec)
            lmax.append(_power_lambda_max(g))
        return torch.stack(lams), torch.stack(vecs), torch.stack(lmax)
    lam, vec = torch.linalg.eigh(G)
    return lam[:, :n], vec[:, :, :n], lam[:, k - 1]


def _power_lambda_max(g: torch.Tensor, iters: int = 30) -> torch.Tensor:
    # Only feeds the error estimate: a few % low is harmless next to the 1e3 margin of GRAM_MAX_REL_ERR.
    x = torch.ones(g.shape[0], dtype=g.dtype) + 0.01 * torch.arange(g.shape[0], dtype=g.dtype) / g.shape[0]
    lam = torch.zeros((), dtype=g.dtype)
    for _ in range(iters):
        y = g @ x
        nrm = y.norm()
        if nrm == 0:
            return nrm
        lam = x @ y / (x @ x)
        x = y / nrm
    # A Frobenius-norm fallback keeps the estimate conservative if the iteration stalled far below.
    return torch.maximum(lam, g.norm() / math.sqrt(g.shape[0]))


@torch.no_grad()
def gram_smallest_triplets(weights: torch.Tensor, t: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[GramReport]]:
    """The Gram fast path on a stack ``(b, out, in)``: float64 ``(U, S, Vh, reports)``, no fallback."""
    W = weights.detach().to(torch.float64)
    b, out_f, in_f = W.shape
    k = min(out_f, in_f)
    wide = out_f <= in_f
    G = W @ W.mT if wide else W.mT @ W  # (b, k, k)
    n = min(t + 1, k)  # one more eigenpair than removed, for the gap at the cut
    lam, Q, lam_max = _lowest_eigenpairs(G, n)
    lam, Q, lam_max = lam.to(W.device), Q.to(W.device), lam_max.to(W.device)
    Qt = Q[:, :, :t]
    # Rayleigh-Ritz on the recovered subspace: singular values and vectors of the small projected matrix.
    if wide:  # Qt spans U_t: U_t^T W = (t, in)
        P, S, Vh = torch.linalg.svd(Qt.mT @ W, full_matrices=False)
        U = Qt @ P
    else:  # Qt spans V_t: W V_t = (out, t)
        U, S, Rh = torch.linalg.svd(W @ Qt, full_matrices=False)
        Vh = (Qt @ Rh.mT).mT
    reports = []
    w_norm = W.flatten(1).norm(dim=1)
    for i in range(b):
        lm = float(lam_max[i].clamp_min(0))
        s_max = math.sqrt(lm)
        gap = float(lam[i, t] - lam[i, t - 1]) if n > t else math.inf
        s_next = math.sqrt(max(float(lam[i, t]), 0.0)) if n > t else 0.0
        if lm == 0:
            est, ratio = 0.0, 0.0
        else:
            theta = _EPS64 * k * lm / gap if gap > 0 else math.inf
            est = min(theta, 1.0) * s_next / max(float(w_norm[i]), 1e-300)
            ratio = float(S[i].min()) / s_max
        reports.append(GramReport(est_rel_err=est, sv_ratio=ratio, used="gram"))
    return U, S, Vh, reports


def principal_triplets(weight: torch.Tensor, r: int, dtype: torch.dtype = torch.float32
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``r`` largest singular triplets ``(U_r, S_r, Vh_r)`` of an (out x in) ``weight``."""
    U, S, Vh = torch.linalg.svd(weight.detach().to(dtype), full_matrices=False)
    return U[:, :r], S[:r], Vh[:r, :]
