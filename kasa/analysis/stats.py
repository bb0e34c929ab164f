"""Statistics for ``kasa-report``: intervals over seeds, paired method differences, McNemar, detectable effects.

Everything here works on plain numbers (one value per seed, or per-example correctness), so it is tested
against scipy on fixed arrays. The choices, stated once:

- **Interval of a mean over seeds:** Student's t interval, ``mean ± t_{1-a/2, n-1} · s / sqrt(n)``
  (:func:`t_interval`). It needs n >= 2; with n = 1 there is no interval (NaN).
- **Paired difference of two methods** over the seeds both ran (same seed = same data order, same split,
  same initialisation of the shared parts): the mean of the per-seed differences ``d_i = a_i - b_i`` with
  (1) the paired t interval (the t interval of the ``d_i``) and (2) a **percentile bootstrap** interval of
  the mean difference (:func:`bootstrap_ci`: 10,000 resamples of the seeds with replacement, numpy's
  ``default_rng(seed)``, the 2.5th and 97.5th percentiles of the resampled means). Percentile, not BCa:
  BCa's acceleration is a jackknife over the seeds, unstable (and undefined when the values are tied) at the
  3-15 seeds a study has. With few seeds the bootstrap interval is too NARROW (it cannot see beyond the
  observed values, and it lacks the t quantile's small-sample widening); the t interval is the one to read
  for n < ~10, which is why both are given.
- **Paired tests:** the paired t-test (``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon`` on the ``d_i``, zero differences dropped, scipy's exact null distribution for
  small n). Two-sided. The smallest two-sided Wilcoxon p with n pairs is ``2 / 2**n``: below 6 seeds it can
  never reach 0.05.
- **McNemar's test** on pooled dev-set predictions (:func:`mcnemar`): with ``b`` = examples only method A
  gets right and ``c`` = only B, exact two-sided binomial test of ``b`` in ``b + c`` trials at p = 1/2
  (``scipy.stats.binomtest``; what statsmodels' ``mcnemar(exact=True)`` computes) when ``b + c < 25``, else
  the continuity-corrected chi-square ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of freedom (statsmodels'
  ``mcnemar(exact=False, correction=True)``). Pooling several seeds' predictions treats the (seed, example)
  pairs as independent although the examples repeat across seeds: the p value is then optimistic; the
  per-seed tests above are the primary evidence.
- **Minimum detectable effect (MDE)** at two-sided alpha = 0.05 and power 0.8, from the observed SD ``s``
  (:func:`mde`): the smallest true difference ``delta`` whose t-test rejects with probability 0.8,

      power(delta) = P(|T| > t_{1-a/2, df}),   T ~ noncentral t(df, delta / SE),

  solved exactly for ``delta`` (≈ ``(t_{1-a/2, df} + t_{power, df}) · SE``, the textbook approximation,
  :func:`mde_approx`). Paired (method differences): ``SE = s_d / sqrt(n)``, ``df = n - 1`` with ``s_d``
  the SD of the per-seed differences. Unpaired (our n seeds against m runs of another source, e.g. the
  paper's number): ``SE = s · sqrt(1/n + 1/m)``, ``df = n + m - 2``, with ``s`` our SD standing in for both
  (the other source's SD is unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

# Metrics stored as fractions in results.json and reported in percent (the paper's units).
FRACTION_METRICS = {"accuracy", "accuracy_m", "accuracy_mm", "f1", "mcc", "pearson", "spearman"}
ALPHA = 0.05
POWER = 0.8
N_BOOTSTRAP = 10_000
BOOTSTRAP_SEED = 0
# Below this many discordant pairs McNemar uses the exact binomial test (the usual rule of thumb).
MCNEMAR_EXACT_BELOW = 25
NAN = float("nan")
# Metrics are stored as float32 fractions: two runs that differ by the same examples on every seed give
# differences that agree only to ~1e-7 of the values' size, and a t-test on that round-off reads as p ~ 1e-7.
# Differences whose spread is within this fraction of the values' magnitude count as identical.
SAME_DIFF_RTOL = 1e-6


def in_table_units(metric: str, value: float) -> float:
    """``value`` in the units tables report: percent for :data:`FRACTION_METRICS` stored as fractions."""
    return value * 100.0 if metric in FRACTION_METRICS and abs(value) <= 1.0 else value


def _arr(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"expected a flat sequence of numbers, got shape {a.shape}")
    return a


def t_interval(values: Sequence[float], conf: float = 1 - ALPHA) -> tuple[float, float]:
    """Student's t interval of the mean: ``mean ± t_{(1+conf)/2, n-1} · s / sqrt(n)``; NaNs for n < 2."""
    a = _arr(values)
    n = a.size
    if n < 2:
        return NAN, NAN
    mean, se = float(a.mean()), float(a.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf((1 + conf) / 2, n - 1)) * se
    return mean - half, mean + half


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                 n_resamples: int = N_BOOTSTRAP, conf: float = 1 - ALPHA, seed: int = BOOTSTRAP_SEED
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over ``values`` (resampled with
    replacement, ``numpy.random.default_rng(seed)``); NaNs for n < 2.

    ``statistic`` maps an ``(n_resamples, n)`` array to ``n_resamples`` values (``axis=-1`` reductions).
    """
    a = _arr(values)
    n = a.size
    if n < 2:
        return NAN, NAN
    stat = statistic or (lambda x: x.mean(axis=-1))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    dist = np.asarray(stat(a[idx]), dtype=np.float64)
    lo, hi = np.percentile(dist, [100 * (1 - conf) / 2, 100 * (1 + conf) / 2])
    return float(lo), float(hi)


def _power(delta: float, se: float, df: float, alpha: float) -> float:
    tcrit = stats.t.ppf(1 - alpha / 2, df)
    nc = delta / se
    # P(T < -c | nc) = P(T > c | -nc); scipy's nct.cdf returns NaN deep in that tail (where it is < 1e-12)
    lower = float(stats.nct.sf(tcrit, df, -nc))
    return float(stats.nct.sf(tcrit, df, nc)) + (0.0 if math.isnan(lower) else lower)


def mde_approx(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """``(t_{1-a/2, df} + t_{power, df}) · SE``: the textbook approximation of :func:`mde`."""
    if not (df >= 1 and math.isfinite(se)):
        return NAN
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided t-test with standard error ``se`` and ``df`` degrees of
    freedom detects with probability ``power`` at level ``alpha`` (noncentral t, solved exactly).

    NaN when there is no SD (``df < 1``, or ``se`` not finite); 0 when ``se`` is 0.
    """
    if not (df >= 1 and math.isfinite(se)):
        return NAN
    if se == 0:
        return 0.0
    hi = max(mde_approx(se, df, alpha, power), se)
    while _power(hi, se, df, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: _power(d, se, df, alpha) - power, 0.0, hi, xtol=1e-10 * se))


def mde_paired(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """MDE of a paired comparison over ``n`` seeds whose per-seed differences have SD ``sd_diff``."""
    if n < 2:
        return NAN
    return mde(sd_diff / math.sqrt(n), n - 1, alpha, power)


def mde_unpaired(sd: float, n: int, m: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """MDE of ``n`` runs against ``m`` independent runs, both with SD ``sd`` (ours standing in for both)."""
    if n < 2 or m < 1:
        return NAN
    return mde(sd * math.sqrt(1 / n + 1 / m), n + m - 2, alpha, power)


@dataclass(frozen=True)
class Summary:
    """One cell's values over seeds: ``values[i]`` is seed ``seeds[i]``'s number."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]
    mean: float
    sd: float          # sample SD (ddof 1); NaN for n = 1
    median: float
    ci: tuple[float, float]   # 95% t interval of the mean

    @property
    def n(self) -> int:
        return len(self.values)


def summarise(by_seed: Mapping[int, float], conf: float = 1 - ALPHA) -> Summary:
    """Mean, SD, median and t interval of one value per seed."""
    if not by_seed:
        raise ValueError("no values to summarise")
    seeds = tuple(sorted(by_seed))
    a = _arr([by_seed[s] for s in seeds])
    return Summary(seeds, tuple(float(v) for v in a), float(a.mean()),
                   float(a.std(ddof=1)) if a.size > 1 else NAN, float(np.median(a)), t_interval(a, conf))


@dataclass(frozen=True)
class Paired:
    """``a - b`` over the seeds both have."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float
    sd: float
    t_ci: tuple[float, float]
    bootstrap_ci: tuple[float, float]
    t_p: float
    wilcoxon_p: float
    mde: float

    @property
    def n(self) -> int:
        return len(self.diffs)


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of the differences (scipy's defaults); 1 when all are 0, NaN for n < 2."""
    d = _arr(diffs)
    if d.size < 2:
        return NAN
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d).pvalue)


def paired_t_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p (``scipy.stats.ttest_rel``); NaN for n < 2 or identical differences."""
    x, y = _arr(a), _arr(b)
    if x.size < 2 or same_differences(x, y):
        return NAN
    return float(stats.ttest_rel(x, y).pvalue)


def same_differences(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a - b`` is the same at every position up to float32 round-off (:data:`SAME_DIFF_RTOL`)."""
    x, y = _arr(a), _arr(b)
    if x.size == 0:
        return True
    scale = max(1.0, float(np.abs(x).max()), float(np.abs(y).max()))
    return float(np.ptp(x - y)) <= SAME_DIFF_RTOL * scale


def paired(a: Mapping[int, float], b: Mapping[int, float], n_resamples: int = N_BOOTSTRAP,
           seed: int = BOOTSTRAP_SEED) -> Paired | None:
    """Paired comparison of ``a`` and ``b`` (``{seed: value}``) over their shared seeds; None if they share none."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    x, y = _arr([a[s] for s in seeds]), _arr([b[s] for s in seeds])
    d = x - y
    if d.size > 1 and same_differences(x, y):
        d = np.full_like(d, d.mean())  # round-off spread only: no spread (SD 0, a zero-width interval, no t-test)
    sd = float(d.std(ddof=1)) if d.size > 1 else NAN
    return Paired(seeds, tuple(float(v) for v in d), float(d.mean()), sd, t_interval(d),
                  bootstrap_ci(d, n_resamples=n_resamples, seed=seed), paired_t_p(x, y), wilcoxon_p(d),
                  mde_paired(sd, d.size))


@dataclass(frozen=True)
class McNemar:
    """McNemar's test of two classifiers on the same examples: ``b`` = only A right, ``c`` = only B right."""

    b: int
    c: int
    n: int           # all paired examples (concordant ones included)
    statistic: float  # exact: min(b, c); chi-square: the corrected statistic
    p: float
    test: str        # "exact binomial" or "chi-square (continuity-corrected)"


def mcnemar(b: int, c: int, n: int | None = None, exact: bool | None = None) -> McNemar:
    """McNemar's test from the discordant counts (see the module docstring); ``exact=None`` chooses the exact
    binomial test below :data:`MCNEMAR_EXACT_BELOW` discordant pairs. No discordant pair: p = 1."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c if n is None else n
    k = b + c
    use_exact = k < MCNEMAR_EXACT_BELOW if exact is None else exact
    if k == 0:
        return McNemar(b, c, n, 0.0, 1.0, "exact binomial" if use_exact else "chi-square (continuity-corrected)")
    if use_exact:
        return McNemar(b, c, n, float(min(b, c)), float(stats.binomtest(b, k, 0.5).pvalue), "exact binomial")
    chi2 = (abs(b - c) - 1) ** 2 / k
    return McNemar(b, c, n, float(chi2), float(stats.chi2.sf(chi2, 1)), "chi-square (continuity-corrected)")


def mcnemar_from_correct(a_correct: Sequence[bool], b_correct: Sequence[bool], exact: bool | None = None) -> McNemar:
    """McNemar's test from per-example correctness of A and B (same examples, same order)."""
    x, y = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"A has {x.size} examples but B has {y.size}")
    return mcnemar(int(np.sum(x & ~y)), int(np.sum(~x & y)), int(x.size), exact)
