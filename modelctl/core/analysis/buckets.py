"""What a Prometheus histogram's buckets resolve: quantiles, the bound a test reads, the tail's slope.

Bounds are the histogram's `le` (the last +Inf) and counts cumulative, as Prometheus exposes
them. The canary judge tests latency at the bucket bound these functions choose
(`threshold_index`, `margin_index`) with the margin the buckets cannot place allowed at the
tail's local slope (`exceedance_margin`); the shadow report reads quantiles as Prometheus'
`histogram_quantile` computes them.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

# Bounds are often written rounded (0.374 for 0.34 * 1.1): "at most" a bound allows this much.
BOUND_TOLERANCE = 1e-3


def threshold_index(cumulative: Floats, quantile: float) -> int:
    """Index of the last finite bound with at least 1 - `quantile` of the total above it.

    At or below the pooled `quantile`, so the tests see at least that share of requests
    (0 when even the first bound has fewer above it).
    """
    within = int(np.searchsorted(cumulative[:-1], quantile * cumulative[-1], side="right")) - 1
    return max(within, 0)


def margin_index(bounds: Floats, t: int, margin: float) -> int:
    """Index of the largest finite bound at most (1 + margin) * bounds[t].

    Bounds are often written rounded (0.374 for 0.34 * 1.1), so "at most" allows 0.1%.
    """
    limit = bounds[t] * (1 + margin) * (1 + BOUND_TOLERANCE)
    return max(int(np.searchsorted(bounds[:-1], limit, side="right")) - 1, t)


def histogram_quantile(bounds: Floats, cumulative: Floats, quantile: float) -> float:
    """The quantile by linear interpolation within its bucket, as Prometheus computes it."""
    total = cumulative[-1]
    if total == 0:
        return math.nan
    rank = quantile * total
    k = int(np.searchsorted(cumulative, rank, side="left"))
    if k >= bounds.size - 1:
        return float(bounds[-2])
    lower = bounds[k - 1] if k > 0 else min(0.0, float(bounds[0]))
    below = cumulative[k - 1] if k > 0 else 0.0
    inside = cumulative[k] - below
    if inside <= 0:
        return float(bounds[k])
    return float(lower + (bounds[k] - lower) * (rank - below) / inside)


def exceedance_margin(
    bounds: Floats, cumulative: Floats, t: int, relaxed: int, margin: float
) -> tuple[float, float]:
    """(rho, k): how many times the baseline's rate above bounds[t] the canary's rate above
    bounds[relaxed] may be, for the canary's tail to be within (1 + margin) of the baseline's.

    The part of the margin the buckets cannot place, g = (1 + margin) bounds[t] / bounds[relaxed]
    >= 1, is covered at the local power-law slope k of the pooled survival function S
    (k = -dlog S / dlog x, `tail_slope`): a tail stretched by g has rate g^k above a bound.
    rho = 1 when a bound sits at the margin; k = NaN then.
    """
    gap = (1 + margin) * float(bounds[t]) / float(bounds[relaxed])
    if gap <= 1 + BOUND_TOLERANCE:
        return 1.0, math.nan
    slope = tail_slope(bounds, cumulative, t)
    return float(gap**slope), slope


def tail_slope(bounds: Floats, cumulative: Floats, t: int) -> float:
    """-dlog S / dlog x between the bound below t and t (else t and the one above), from counts.

    0 (no allowance: stricter than asked, never laxer) where no pair of positive bounds with
    requests above both gives a slope.
    """
    survival = cumulative[-1] - cumulative
    for low, high in ((t - 1, t), (t, t + 1)):
        if low < 0 or high > bounds.size - 2 or bounds[low] <= 0:
            continue
        if survival[high] > 0 and survival[low] > survival[high]:
            return float(np.log(survival[low] / survival[high]) / np.log(bounds[high] / bounds[low]))
    return 0.0


def bin_midpoints(bounds: Floats) -> Floats:
    """The middle of each bucket of `bounds` (the last +Inf), the first from min(0, its bound)."""
    finite = bounds[:-1]
    lower = np.r_[min(0.0, float(finite[0])) if finite.size else 0.0, finite]
    upper = np.r_[finite, finite[-1] if finite.size else 1.0]
    mids: Floats = (lower + upper) / 2
    return mids
