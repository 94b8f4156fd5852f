"""The two-sample statistics drift detection and the canary judge use.

Kolmogorov–Smirnov (statistic against a reference sketch, small-sample p-value), Pearson's
chi-squared test of homogeneity and Fisher's exact test where counts are small, the population
stability index, the Wasserstein-1 distance, Cohen's w and h, and multiplicity corrections (Holm,
Benjamini–Hochberg, Bonferroni). Sources are named per function.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from modelctl.core.drift.profile import Floats, Ints, Sketch
from modelctl.core.schema import Correction

EXACT_PVALUE_MAX_N = 2000


def ks_statistic(sketch: Sketch, ordered: Floats) -> float:
    """Two-sample KS statistic D between the reference sketch and a sorted current sample.

    The supremum of |F_ref - F_cur| is attained at a jump of either function, approached from
    the right or the left; every such point is evaluated. With an exact sketch this is the same
    set of differences `scipy.stats.ks_2samp` takes the maximum of.

    Parameters
    ----------
    sketch : Sketch
        The reference distribution (exact or sketched).
    ordered : ndarray of shape (m,)
        The current sample, finite values sorted ascending, m >= 1.

    Returns
    -------
    float
        D in [0, 1].

    References
    ----------
    Kolmogorov–Smirnov two-sample statistic; scipy.stats.ks_2samp for the exact case.
    """
    m, n = ordered.size, sketch.n
    left, right = _positions(ordered, sketch.values)
    at_sketch = max(
        float(np.max(np.abs(sketch.le / n - right / m))),
        float(np.max(np.abs(sketch.lt / n - left / m))),
    )
    if np.any(ordered[1:] == ordered[:-1]):
        return max(at_sketch, _ks_at_distinct(sketch, ordered))
    # gap[i] = F_ref(x_i) - F_cur(x_i-) for the i-th smallest current value x_i.
    gap = sketch.counts_of_sorted(ordered, left)
    gap /= n
    gap -= _steps(m)
    at_right = max(1.0 / m - float(gap.min()), float(gap.max()) - 1.0 / m)
    # At a current value that is also a sketch value the left limit of F_ref is lt, not the
    # interpolated count: those pairs were taken in `at_sketch`, so neutralize them here.
    gap[left[right > left]] = 0.0
    at_left = max(float(gap.max()), -float(gap.min()))
    return max(at_sketch, at_right, at_left)


def _ks_at_distinct(sketch: Sketch, ordered: Floats) -> float:
    """The current-sample part of `ks_statistic` when the sample has ties."""
    m, n = ordered.size, sketch.n
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    values = ordered[starts]
    reference = sketch.counts(values) / n
    at_right = float(np.max(np.abs(reference - np.r_[starts[1:], m] / m)))
    from_left = np.abs(reference - starts / m)
    position = np.minimum(np.searchsorted(values, sketch.values), values.size - 1)
    from_left[position[values[position] == sketch.values]] = 0.0
    return max(at_right, float(from_left.max()))


def _positions(ordered: Floats, values: Floats) -> tuple[Ints, Ints]:
    """searchsorted(ordered, values) from the left and from the right.

    The right-hand search is only run for the values that occur in `ordered`, since elsewhere
    both are equal; with a large exact reference that halves the work.
    """
    left = np.searchsorted(ordered, values, side="left")
    right = left.copy()
    inside = left < ordered.size
    present = np.zeros(values.size, dtype=bool)
    present[inside] = ordered[left[inside]] == values[inside]
    if present.any():
        right[present] = np.searchsorted(ordered, values[present], side="right")
    return left, right


@functools.lru_cache(maxsize=2)
def _steps(m: int) -> Floats:
    """i / m for i = 0..m-1, shared by the columns of one window (read-only)."""
    steps = np.arange(m) / m
    steps.flags.writeable = False
    return steps


def ks_pvalue(statistic: float, n_reference: int, n_current: int) -> float:
    """Asymptotic two-sided p-value of the two-sample KS statistic.

    Up to an effective size n1 n2 / (n1 + n2) of `EXACT_PVALUE_MAX_N`, the exact one-sample
    distribution `kstwo` at the effective size rounded down (the formula
    `scipy.stats.ks_2samp(method="asymp")` uses, rounded to the safe side; for a current window much
    smaller than the reference it is the exact small-sample distribution of D); above it Smirnov's limit `kolmogorov(sqrt(n) D)`, because kstwo's cost grows
    with n (0.2 s per call at 1M x 1M rows). The limit is never smaller than kstwo's value and
    is within 0.7% of it (absolute) from that size on: the p-value only errs on the safe side.

    Parameters
    ----------
    statistic : float
        D in [0, 1] (for a sketch, D minus its error bound).
    n_reference, n_current : int
        The two sample sizes.

    Returns
    -------
    float
        The p-value in [0, 1].

    References
    ----------
    Smirnov (1948), Table for estimating the goodness of fit of empirical distributions; scipy's
    `kstwo` (Simard & L'Ecuyer 2011) and `kolmogorov`.
    """
    big, small = sorted([float(n_reference), float(n_current)], reverse=True)
    effective = big * small / (big + small)
    if effective <= EXACT_PVALUE_MAX_N:
        # kstwo.sf falls as its n grows: rounding the effective size down errs on the safe side.
        p_value = stats.kstwo.sf(statistic, max(1.0, math.floor(effective)))
    else:
        p_value = special.kolmogorov(math.sqrt(effective) * statistic)
    return float(np.clip(p_value, 0.0, 1.0))


def adjust_pvalues(p_values: npt.ArrayLike, method: Correction = "holm") -> Floats:
    """Multiplicity-adjusted p-values; reject where adjusted <= alpha.

    "holm": Holm's step-down (family-wise error rate, any dependence); "bh": Benjamini–Hochberg
    step-up (false discovery rate, independent or positively dependent tests); "bonferroni";
    "none".

    Parameters
    ----------
    p_values : array_like of shape (k,)
        Raw p-values in [0, 1].
    method : {"holm", "bh", "bonferroni", "none"}
        The correction.

    Returns
    -------
    ndarray of shape (k,)
        Adjusted p-values in [0, 1], in the input order.

    Raises
    ------
    ValueError
        An unknown method.

    References
    ----------
    Holm (1979), A simple sequentially rejective multiple test procedure; Benjamini & Hochberg
    (1995), Controlling the false discovery rate.
    """
    p = np.asarray(p_values, dtype=np.float64)
    k = p.size
    if k == 0 or method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * k, 1.0)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        steps = np.maximum.accumulate(ranked * (k - np.arange(k)))
    elif method == "bh":
        steps = np.minimum.accumulate((ranked * k / np.arange(1, k + 1))[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}; use holm, bh, bonferroni or none")
    adjusted = np.empty(k)
    adjusted[order] = np.minimum(steps, 1.0)
    return adjusted


def wasserstein(sketch: Sketch, ordered: Floats, grid: int = 2048) -> float:
    """W1 = integral over p of |Q_ref(p) - Q_cur(p)|, by the midpoint rule on `grid` quantiles.

    Parameters
    ----------
    sketch : Sketch
        The reference distribution.
    ordered : ndarray of shape (m,)
        The current sample, sorted, m >= 1.
    grid : int
        Quantile levels used by the midpoint rule.

    Returns
    -------
    float
        The distance, in the unit of the feature.
    """
    p = (np.arange(grid) + 0.5) / grid
    current = ordered[np.minimum((p * ordered.size).astype(np.int64), ordered.size - 1)]
    return float(np.mean(np.abs(sketch.quantile(p) - current)))


def psi_from_counts(reference: Floats, current: Floats) -> float:
    """PSI with half-a-count smoothing, so that an empty bin does not give infinity.

    Parameters
    ----------
    reference, current : ndarray of shape (B,)
        Counts per bin.

    Returns
    -------
    float
        sum over bins of (c - r) ln(c / r), r and c the smoothed proportions; >= 0.

    References
    ----------
    Yurdakul (2018), Statistical properties of population stability index.
    """
    keep = (reference + current) > 0
    r = (reference[keep] + 0.5) / (reference.sum() + 0.5 * keep.sum())
    c = (current[keep] + 0.5) / (current.sum() + 0.5 * keep.sum())
    return float(np.sum((c - r) * np.log(c / r)))


def category_counts(categories: Floats, ordered: Floats) -> Floats:
    """Current counts per reference category, and last the count of unseen categories."""
    known = (
        np.searchsorted(ordered, categories, side="right") - np.searchsorted(ordered, categories, side="left")
    ).astype(np.float64)
    result: Floats = np.r_[known, ordered.size - known.sum()]
    return result


def chi_squared(reference: Floats, current: Floats) -> tuple[float, float]:
    """Pearson's chi-squared test of homogeneity on the 2 x K table of counts.

    Parameters
    ----------
    reference, current : ndarray of shape (K,)
        Counts per category (the same categories, in the same order).

    Returns
    -------
    tuple of float
        The statistic and its p-value (chi-squared with K' - 1 degrees of freedom, K' the
        categories seen on either side); (0, 1) when there is nothing to compare.
    """
    keep = (reference + current) > 0
    table = np.vstack([reference[keep], current[keep]])
    totals = table.sum(axis=1, keepdims=True)
    if table.shape[1] < 2 or np.any(totals == 0):
        return 0.0, 1.0
    expected = totals * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, table.shape[1] - 1))


# Cochran's rule: the chi-squared approximation holds when every expected count is at least 5.
CHI_SQUARED_MIN_EXPECTED = 5.0


def category_test(reference: Floats, current: Floats) -> tuple[str, float, float]:
    """Do the current category counts come from the reference proportions? Exact where counts are small.

    When every reference category expects at least `CHI_SQUARED_MIN_EXPECTED` current rows
    (Cochran's rule, decided from the reference and the window size only, so the choice does
    not depend on the current counts), Pearson's chi-squared test (`chi_squared`). Otherwise
    Fisher's exact test on each category's 2 x 2 table (the category against the others,
    reference against current; the categories the reference never saw as one), Bonferroni-
    combined over the tables: a valid level-alpha test at any count, one row included.

    Parameters
    ----------
    reference, current : ndarray of shape (K,)
        Counts per category, the last being the categories the reference never saw.

    Returns
    -------
    tuple
        (test name "chi2" or "fisher", statistic, p-value): the chi-squared statistic, or the
        total-variation distance between the two proportions.

    References
    ----------
    Cochran (1954), Some methods for strengthening the common chi-squared tests; Fisher (1922),
    On the interpretation of chi-squared from contingency tables; `scipy.stats.fisher_exact`.
    """
    n, m = float(reference.sum()), float(current.sum())
    if m == 0 or n == 0:
        return "chi2", 0.0, 1.0
    seen = reference > 0
    if np.min(reference[seen]) * m / n >= CHI_SQUARED_MIN_EXPECTED:
        return ("chi2", *chi_squared(reference, current))
    known = [int(k) for k in np.flatnonzero(seen[:-1])]
    # With two known categories both of their tables are one test; the unseen pool is always one.
    tables = [*(known[:1] if len(known) == 2 else known), reference.size - 1]
    smallest = min(
        float(stats.fisher_exact([[reference[k], n - reference[k]], [current[k], m - current[k]]]).pvalue)
        for k in tables
    )
    distance = 0.5 * float(np.abs(reference / n - current / m).sum())
    return "fisher", distance, min(1.0, smallest * len(tables))


def cohens_w(reference: Floats, current: Floats) -> float:
    """sqrt(sum (p_cur - p_ref)^2 / p_ref); an unseen category counts as half a reference value."""
    if current.sum() == 0:
        return math.nan
    p_ref = np.maximum(reference, 0.5) / max(reference.sum(), 1.0)
    p_cur = current / current.sum()
    return float(np.sqrt(np.sum((p_cur - p_ref) ** 2 / p_ref)))


def cohens_h(p1: float, p2: float) -> float:
    """Effect size of a change in a proportion (0.2 small, 0.5 medium, like Cohen's d)."""
    return abs(2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2)))


def missing_rate_p(ref_missing: int, ref_count: int, cur_missing: int, cur_count: int) -> float | None:
    """Two-sided p-value of a change in the missing rate; None when neither side misses any.

    Fisher's exact test on the 2 x 2 table (missing, present) x (reference, current): valid at
    any count, one row included (`scipy.stats.fisher_exact`).
    """
    if ref_missing == 0 and cur_missing == 0:
        return None
    if ref_missing + ref_count == 0 or cur_missing + cur_count == 0:
        return 1.0
    table = [[ref_missing, ref_count], [cur_missing, cur_count]]
    return float(stats.fisher_exact(table).pvalue)
