"""GLUE metrics (kasa.tasks.classification.metrics) against sklearn / scipy and an independent definition, at the edges.

sklearn is not a kasa dependency: its comparisons run where it is installed; the hard-coded values below
were computed with sklearn 1.9.1 (``sklearn.metrics.matthews_corrcoef``) and hold everywhere.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from kasa.tasks.classification import metrics as glue
from kasa.tasks.classification.module import build_metrics


def _mcc_definition(y: np.ndarray, p: np.ndarray, k: int) -> float:
    """R_K from its definition: covariance of the one-hot label and prediction matrices (Gorodkin 2004)."""
    x, z = np.eye(k)[y], np.eye(k)[p]
    x, z = x - x.mean(0), z - z.mean(0)
    cxz, cxx, czz = (x * z).sum(), (x * x).sum(), (z * z).sum()
    return 0.0 if cxx * czz == 0 else cxz / math.sqrt(cxx * czz)


def _mcc(preds, target, k: int = 2) -> float:
    m = build_metrics(["mcc"], k)  # what training logs: kasa.tasks.classification.module's table
    m.update(torch.as_tensor(preds), torch.as_tensor(target))
    return float(m.compute()["mcc"])


def test_mcc_one_class_everywhere_is_zero():
    # CoLA-like dev labels (1043, 69% acceptable): predicting "acceptable" everywhere carries no information.
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(1043, generator=g) < 0.69).long()
    for const in (0, 1):
        assert _mcc(torch.full_like(labels, const), labels) == 0.0
    skewed = (torch.rand(1043, generator=g) < 0.97).long()
    assert _mcc(torch.ones_like(skewed), skewed) == 0.0
    # labels of one class, predictions varied: also a zero denominator
    assert _mcc(labels, torch.ones_like(labels)) == 0.0
    assert _mcc([2, 2, 2], [2, 2, 2], k=3) == 0.0  # everything right, but one class only (sklearn: 0.0)


def test_mcc_known_values():
    # sklearn.metrics.matthews_corrcoef on these arrays (sklearn 1.9.1)
    assert _mcc([0, 1, 1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 1, 2, 2, 0], k=3) == pytest.approx(0.42857142857142855,
                                                                                        abs=1e-12)
    assert _mcc([1, 0, 0, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1, 1]) == pytest.approx(0.3, abs=1e-12)
    assert _mcc([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0, abs=1e-12)
    assert _mcc([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_mcc_random_against_definition_and_sklearn(k):
    rng = np.random.default_rng(k)
    for n in (1, 7, 100, 1000):
        y = rng.integers(0, k, n)
        p = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
        ours = _mcc(p, y, k)
        assert ours == pytest.approx(_mcc_definition(y, p, k), abs=1e-12)
        try:
            from sklearn.metrics import matthews_corrcoef
        except ImportError:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ours == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)


def test_mcc_states_sum_across_ranks():
    """The confusion matrix is the only state and it is summed (DDP): two shards merged = one pass."""
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    whole = glue.MatthewsCorrCoef(3)
    whole.update(torch.tensor(p), torch.tensor(y))
    a, b = glue.MatthewsCorrCoef(3), glue.MatthewsCorrCoef(3)
    a.update(torch.tensor(p[:77]), torch.tensor(y[:77]))
    b.update(torch.tensor(p[77:]), torch.tensor(y[77:]))
    a.merge_state(b)
    assert torch.equal(a.confmat, whole.confmat) and float(a.compute()) == float(whole.compute())
    from torchmetrics.utilities.data import dim_zero_sum

    assert whole._reductions["confmat"] is dim_zero_sum  # what torchmetrics all-reduces across ranks
    # (N, K) scores are arg-maxed; labels outside the classes are refused with the range named
    m = glue.MatthewsCorrCoef(2)
    m.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 0]))
    assert float(m.compute()) == 1.0
    with pytest.raises(ValueError, match=r"label outside \[0, 1\]"):
        m.update(torch.tensor([0]), torch.tensor([2]))


# ------------------------------------------------------------------ STS-B correlations


def _corr(name: str, preds, target) -> float:
    m = build_metrics([name], 1)
    m.update(torch.as_tensor(preds, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32))
    return float(m.compute()[name])


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_constant_predictions_score_zero_where_scipy_gives_nan(name):
    import scipy.stats

    target = np.linspace(0, 5, 40)
    const = np.full(40, 2.5)
    assert _corr(name, const, target) == 0.0
    assert _corr(name, target, const) == 0.0
    fn = scipy.stats.pearsonr if name == "pearson" else scipy.stats.spearmanr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(fn(const, target)[0])  # the documented difference (docs/protocols.md, Evaluation)


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_correlations_match_scipy_with_ties(name):
    import scipy.stats

    rng = np.random.default_rng(3)
    target = rng.integers(0, 6, 300).astype(np.float64) / 5 * 5  # STS-B-like grid with many ties
    preds = np.round(target + rng.normal(0, 1.2, 300), 1).astype(np.float32).astype(np.float64)
    fn = scipy.stats.pearsonr if name == "pearson" else scipy.stats.spearmanr
    assert _corr(name, preds, target) == pytest.approx(float(fn(preds, target)[0]), abs=1e-9)


def test_average_ranks_match_scipy():
    import scipy.stats

    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    assert glue.average_ranks(x).tolist() == scipy.stats.rankdata(x.numpy()).tolist()
