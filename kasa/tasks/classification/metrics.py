"""GLUE's metrics as torchmetrics ``Metric`` s whose states sum (or concatenate) across DDP ranks.

- :class:`MatthewsCorrCoef` (CoLA): exactly ``sklearn.metrics.matthews_corrcoef`` (the GLUE baseline and
  HF ``evaluate``'s ``glue`` metric call it), computed from a confusion matrix in float64, 0.0 when the
  denominator is zero (one class predicted everywhere, or one class in the labels). torchmetrics 1.9's
  ``MatthewsCorrCoef`` returns a small non-zero value there (0.026 for a constant prediction on 1043
  CoLA-like labels), which is why it is not used.
- :class:`PearsonCorrCoef`, :class:`SpearmanCorrCoef` (STS-B): ``scipy.stats.pearsonr`` / ``spearmanr``
  (average ranks for ties) in float64 over all gathered predictions, except that a constant prediction
  (or constant labels) scores 0.0 where scipy returns NaN; see :class:`PearsonCorrCoef` for why.
"""

from __future__ import annotations

import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

__all__ = ["MatthewsCorrCoef", "PearsonCorrCoef", "SpearmanCorrCoef", "matthews_corrcoef", "pearson",
           "spearman", "average_ranks"]


def matthews_corrcoef(confmat: torch.Tensor) -> float:
    """MCC of a ``K x K`` confusion matrix (rows: true class, columns: predicted), as sklearn computes it.

    Multi-class form (Gorodkin's R_K); 0.0 when ``cov(pred, pred) * cov(true, true)`` is zero.
    """
    c = confmat.to(torch.float64)
    t_sum, p_sum = c.sum(dim=1), c.sum(dim=0)
    n_correct, n = torch.trace(c), c.sum()
    cov_tp = n_correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    denom = cov_pp * cov_tt
    if denom == 0:
        return 0.0
    return float(cov_tp / torch.sqrt(denom))


class MatthewsCorrCoef(torchmetrics.Metric):
    """Matthews correlation (GLUE CoLA) from a confusion-matrix state summed across ranks.

    ``update(preds, target)``: predicted class indices (or ``(N, K)`` scores, arg-maxed) and true class
    indices in ``[0, num_classes)``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"MatthewsCorrCoef needs num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(-1)
        preds, target = preds.reshape(-1).long(), target.reshape(-1).long()
        if preds.shape != target.shape:
            raise ValueError(f"MCC: {preds.numel()} predictions but {target.numel()} labels")
        k = self.num_classes
        for name, x in (("prediction", preds), ("label", target)):
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= k):
                raise ValueError(f"MCC: a {name} outside [0, {k - 1}] (got {int(x.min())}..{int(x.max())})")
        self.confmat += torch.bincount(target * k + preds, minlength=k * k).reshape(k, k).to(self.confmat)

    def compute(self) -> torch.Tensor:
        return torch.tensor(matthews_corrcoef(self.confmat), dtype=torch.float64)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their mean rank (``scipy.stats.rankdata(method="average")``)."""
    x = x.reshape(-1)
    sorted_x, order = torch.sort(x, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    ranks[order] = mean_rank[inverse]
    return ranks


def pearson(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Pearson's r in float64; 0.0 when either side has zero variance (scipy: NaN)."""
    p, t = preds.reshape(-1).to(torch.float64), target.reshape(-1).to(torch.float64)
    if p.numel() != t.numel():
        raise ValueError(f"correlation: {p.numel()} predictions but {t.numel()} labels")
    if p.numel() < 2:
        raise ValueError(f"correlation needs at least 2 pairs, got {p.numel()}")
    p, t = p - p.mean(), t - t.mean()
    denom = torch.sqrt((p @ p) * (t @ t))
    if denom == 0:
        return 0.0
    # scipy clips to [-1, 1] against rounding; so do we
    return float(torch.clamp((p @ t) / denom, -1.0, 1.0))


def spearman(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Spearman's rho (Pearson of average ranks) in float64; 0.0 when either side is constant (scipy: NaN)."""
    return pearson(average_ranks(preds.reshape(-1)), average_ranks(target.reshape(-1)))


class _Correlation(torchmetrics.Metric):
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # lists of tensors: concatenated across ranks before compute (ranks need every prediction)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.preds.append(preds.detach().reshape(-1).to(torch.float64))
        self.target.append(target.detach().reshape(-1).to(torch.float64))

    def _fn(self, p: torch.Tensor, t: torch.Tensor) -> float:
        raise NotImplementedError

    def compute(self) -> torch.Tensor:
        return torch.tensor(self._fn(dim_zero_cat(self.preds), dim_zero_cat(self.target)), dtype=torch.float64)


class PearsonCorrCoef(_Correlation):
    """Pearson's r (GLUE STS-B), as ``scipy.stats.pearsonr`` but 0.0 for a constant prediction.

    Why 0.0 and not scipy's NaN: a model that outputs one value everywhere carries no information about the
    labels, and 0 is the value of "no association" (the same convention sklearn's MCC uses for its zero
    denominator, which GLUE's CoLA score inherits). A NaN would also propagate into the GLUE average and
    make the epoch's row incomparable, while the model is simply uninformative. This differs from the
    GLUE scorer (scipy) only on that degenerate epoch; any non-constant prediction gives scipy's value.
    """

    def _fn(self, p: torch.Tensor, t: torch.Tensor) -> float:
        return pearson(p, t)


class SpearmanCorrCoef(_Correlation):
    """Spearman's rho (GLUE STS-B), as ``scipy.stats.spearmanr`` (average ranks for ties) but 0.0 when the
    predictions (or the labels) are constant, where scipy returns NaN; the reason is
    :class:`PearsonCorrCoef`'s."""

    def _fn(self, p: torch.Tensor, t: torch.Tensor) -> float:
        return spearman(p, t)
