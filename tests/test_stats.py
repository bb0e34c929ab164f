"""kasa.analysis.stats against scipy and hand-computed values on fixed arrays."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from kasa.analysis import stats


def test_t_interval_is_students_t_around_the_mean():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    lo, hi = stats.t_interval(x)
    half = sps.t.ppf(0.975, 4) * statistics.stdev(x) / math.sqrt(5)  # 2.776 * 1.581 / 2.236 = 1.963
    assert (lo, hi) == pytest.approx((3 - half, 3 + half)) and half == pytest.approx(1.9632, abs=1e-4)
    assert (lo, hi) == pytest.approx(sps.t.interval(0.95, 4, loc=3.0, scale=sps.sem(x)))
    assert all(math.isnan(v) for v in stats.t_interval([7.0]))


def test_summary_of_one_value_per_seed():
    s = stats.summarise({2: 91.0, 0: 90.0, 1: 95.0})
    assert s.seeds == (0, 1, 2) and s.values == (90.0, 95.0, 91.0) and s.n == 3
    assert s.mean == pytest.approx(92.0) and s.median == 91.0 and s.sd == pytest.approx(statistics.stdev([90, 95, 91]))
    one = stats.summarise({0: 90.0})
    assert math.isnan(one.sd) and math.isnan(one.ci[0])


def test_percentile_bootstrap_by_hand_and_against_scipy():
    # two values: resampled means are 0 (p 1/4), 0.5 (1/2), 1 (1/4) -> the 2.5th / 97.5th percentiles are 0 and 1
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    x = np.array([1.2, -0.4, 2.5, 0.3, 1.9, 0.8, -1.1, 3.0, 0.1, 1.4, 2.2, -0.2])
    lo, hi = stats.bootstrap_ci(x, n_resamples=20_000, seed=1)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20_000, method="percentile", rng=np.random.default_rng(7))
    se = x.std(ddof=1) / math.sqrt(x.size)
    # two independent Monte Carlo runs of the same interval agree to a tenth of the standard error (MC error ~0.03)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.1 * se)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.1 * se)
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3) != stats.bootstrap_ci(x, seed=4)


def test_paired_comparison_matches_scipy_and_hand_values():
    a = {0: 82.0, 1: 81.0, 2: 85.0, 3: 79.5, 4: 90.0, 9: 70.0}  # seed 9: not in b, left out
    b = {0: 80.0, 1: 80.0, 2: 82.0, 3: 80.0, 4: 86.0, 5: 60.0}
    p = stats.paired(a, b)
    d = [2.0, 1.0, 3.0, -0.5, 4.0]
    assert p.seeds == (0, 1, 2, 3, 4) and p.diffs == pytest.approx(d) and p.n == 5
    assert p.mean == pytest.approx(1.9) and p.sd == pytest.approx(statistics.stdev(d))
    x, y = [a[s] for s in p.seeds], [b[s] for s in p.seeds]
    assert p.t_p == pytest.approx(sps.ttest_rel(x, y).pvalue)
    t = 1.9 / (statistics.stdev(d) / math.sqrt(5))
    assert p.t_p == pytest.approx(2 * sps.t.sf(t, 4))
    # Wilcoxon by hand: ranks of |d| = 3, 2, 4, 1, 5; W- = 1; P(W- <= 1) = 2/32 under H0; two-sided 4/32
    assert p.wilcoxon_p == pytest.approx(4 / 32) and p.wilcoxon_p == pytest.approx(sps.wilcoxon(d).pvalue)
    assert p.t_ci == pytest.approx(sps.t.interval(0.95, 4, loc=1.9, scale=sps.sem(d)))
    assert p.bootstrap_ci == stats.bootstrap_ci(d)
    assert p.mde == pytest.approx(stats.mde_paired(statistics.stdev(d), 5))
    assert stats.paired({0: 1.0}, {1: 2.0}) is None


def test_wilcoxon_cannot_reach_005_below_six_pairs_and_degenerate_cases():
    assert stats.wilcoxon_p([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 2**5)
    assert stats.wilcoxon_p([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == pytest.approx(2 / 2**6)
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0 and math.isnan(stats.wilcoxon_p([3.0]))
    assert math.isnan(stats.paired_t_p([1.0, 2.0], [0.0, 1.0]))  # identical differences: no SD


def test_differences_equal_up_to_float32_round_off_have_no_spread():
    # 23 more of 840 tweets right at two seeds, the accuracies stored as float32 fractions, read in percent
    acc = lambda k: float(np.float32(k / 840)) * 100  # noqa: E731
    a, b = {0: acc(660), 1: acc(641)}, {0: acc(637), 1: acc(618)}
    assert a[0] - b[0] != a[1] - b[1]  # the round-off this is about
    p = stats.paired(a, b)
    assert p.sd == 0 and math.isnan(p.t_p) and p.t_ci[0] == p.t_ci[1] == pytest.approx(23 / 8.4)
    assert p.mde == 0 and p.diffs == (p.mean, p.mean)
    assert not math.isnan(stats.paired({0: acc(660), 1: acc(642)}, b).t_p)  # one example apart is a spread


def test_mcnemar_on_a_fixed_contingency_table():
    # both right 50, only A 2, only B 8, both wrong 40
    a = [True] * 50 + [True] * 2 + [False] * 8 + [False] * 40
    b = [True] * 50 + [False] * 2 + [True] * 8 + [False] * 40
    m = stats.mcnemar_from_correct(a, b)
    assert (m.b, m.c, m.n, m.test) == (2, 8, 100, "exact binomial")
    # exact: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024 (statsmodels' mcnemar(exact=True))
    assert m.p == pytest.approx(112 / 1024) and m.p == pytest.approx(min(1.0, 2 * sps.binom.cdf(2, 10, 0.5)))
    big = stats.mcnemar(30, 10)  # 40 discordant pairs: chi-square with continuity correction
    assert big.test.startswith("chi-square") and big.statistic == pytest.approx(19**2 / 40)
    assert big.p == pytest.approx(sps.chi2.sf(9.025, 1)) and big.p == pytest.approx(0.002663, abs=1e-6)
    assert stats.mcnemar(30, 10, exact=True).p == pytest.approx(sps.binomtest(10, 40).pvalue)
    assert stats.mcnemar(5, 5).p == pytest.approx(1.0) and stats.mcnemar(0, 0).p == 1.0
    with pytest.raises(ValueError, match="b=-1"):
        stats.mcnemar(-1, 3)


def test_minimum_detectable_effect_has_power_08():
    for se, df in ((1.0, 2), (0.7, 4), (2.5, 14)):
        d = stats.mde(se, df)
        crit = sps.t.ppf(0.975, df)
        power = sps.nct.sf(crit, df, d / se) + sps.nct.cdf(-crit, df, d / se)
        assert power == pytest.approx(0.8, abs=1e-6)
        approx = (sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) * se
        assert stats.mde_approx(se, df) == pytest.approx(approx) and d == pytest.approx(approx, rel=0.08)
    # large df: the normal formula (z_0.975 + z_0.8) * SE = 2.8016 * SE
    assert stats.mde(1.0, 1e6) == pytest.approx(1.959964 + 0.841621, abs=1e-3)
    # the example: 3 vs 3 seeds with SDs 3.0 and 1.8 (pooled) -> about 7.6 points
    sd = math.sqrt((3.0**2 + 1.8**2) / 2)
    assert stats.mde_unpaired(sd, 3, 3) == pytest.approx(7.6, abs=0.05)
    assert stats.mde_unpaired(2.0, 5, 1) == pytest.approx(stats.mde(2.0 * math.sqrt(1 / 5 + 1), 4))
    assert stats.mde_paired(1.5, 8) == pytest.approx(stats.mde(1.5 / math.sqrt(8), 7))
    assert math.isnan(stats.mde_paired(1.0, 1)) and stats.mde(0.0, 3) == 0.0
