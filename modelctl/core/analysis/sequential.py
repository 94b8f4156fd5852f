"""Sequential statistics: e-values and confidence sequences that stay valid however often one looks.

The analyses read cumulative counts again at every look (the canary judge every few minutes,
an A/B experiment whenever it is asked), so every test here is sequential. Each p-value is 1/E
for an e-value E (a nonnegative supermartingale under the null) computed from the cumulative
counts alone, so Ville's inequality bounds the chance that *any* look ever rejects a true
hypothesis by alpha without remembering earlier looks (Ramdas, Grünwald, Vovk and Shafer,
"Game-theoretic statistics and safe anytime-valid inference", Statistical Science 2023).

- `origin_log_evalue`: which arm each event came from, a mixture SPRT over rate ratios (harm);
- `difference_noninferiority`, `difference_confidence`, `normal_mixture_radius`: the
  normal-mixture mSPRT and its confidence sequence on a difference of rates (non-inferiority,
  the A/B experiments' intervals);
- `independence_log_evalue`: a Bayes factor against the best common split (universal inference),
  for a change in a distribution.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import special

Floats = npt.NDArray[np.float64]

# Scale of the normal mixture for the error-rate difference when the margin is zero.
MIN_ERROR_SCALE = 0.001
# Beta prior strength per score bin (in pseudo-requests), centred on the configured split.
SCORE_PRIOR_STRENGTH = 2.0


def origin_log_evalue(
    events_canary: float,
    events_baseline: float,
    share: float,
    ratios: Floats,
    weights: Floats,
    *,
    null_ratio: float = 1.0,
) -> float:
    """log E for "the canary's event rate / the baseline's is one of `ratios`" against `null_ratio`.

    Each event comes from the canary with probability q(r) = s r / (s r + 1 - s) when the rate
    ratio is r and the canary's traffic share is s (two Poisson streams thinned by origin).
    Under r = `null_ratio` the likelihood ratio of every alternative is a martingale; under r on
    the other side of `null_ratio` than all `ratios`, a supermartingale. Their
    `weights`-mixture is the e-value (Wald's SPRT mixed over alternatives).
    """
    if not 0 < share < 1 or events_canary + events_baseline == 0:
        return 0.0
    q0 = share * null_ratio / (share * null_ratio + 1 - share)
    q = share * ratios / (share * ratios + 1 - share)
    log_lr = events_canary * np.log(q / q0) + events_baseline * np.log((1 - q) / (1 - q0))
    return _log_mixture(log_lr, weights)


def _log_mixture(log_values: Floats, weights: Floats) -> float:
    """log sum(weights * exp(log_values)), without overflow (scipy's logsumexp costs 50x more)."""
    top = float(log_values.max())
    return top + math.log(float(weights @ np.exp(log_values - top)))


def difference_noninferiority(
    errors_c: float, n_c: float, errors_b: float, n_b: float, margin: float
) -> tuple[float, float]:
    """(z, log E) for "p_c - p_b < margin" against "p_c - p_b >= margin".

    z is the difference's distance below the margin in standard errors taken at the margin
    (rates refitted so that they differ by exactly the margin and explain all the errors);
    E is the one-sided normal-mixture likelihood ratio with a half-normal prior of scale
    max(margin, 0.001) on how far below the margin the difference is.
    """
    total = n_c + n_b
    p_b = min(max((errors_c + errors_b - n_c * margin) / total, 0.0), max(1.0 - margin, 0.0))
    p_c = min(p_b + margin, 1.0)
    variance = p_c * (1 - p_c) / n_c + p_b * (1 - p_b) / n_b
    if variance <= 0:
        return 0.0, 0.0
    z = (margin - (errors_c / n_c - errors_b / n_b)) / math.sqrt(variance)
    return z, _one_sided_normal_log_evalue(z, max(margin, MIN_ERROR_SCALE) ** 2 / variance)


def difference_confidence(
    errors_c: float, n_c: float, errors_b: float, n_b: float, *, margin: float, alpha: float
) -> tuple[float, float]:
    """An always-valid (1 - alpha) confidence interval for p_c - p_b (normal mixture boundary)."""
    smooth_c, smooth_b = (errors_c + 1) / (n_c + 2), (errors_b + 1) / (n_b + 2)
    variance = smooth_c * (1 - smooth_c) / n_c + smooth_b * (1 - smooth_b) / n_b
    radius = normal_mixture_radius(variance, max(margin, MIN_ERROR_SCALE), alpha)
    centre = errors_c / n_c - errors_b / n_b
    return centre - radius, centre + radius


def normal_mixture_radius(variance: float, scale: float, alpha: float) -> float:
    """Half-width of the two-sided (1 - alpha) normal-mixture confidence sequence.

    For an estimate with (asymptotically normal) `variance`, mixing the Gaussian likelihood
    ratio over a N(0, `scale`^2) prior on the true value (the mSPRT of Johari, Pekelis and Walsh,
    "Always valid inference", 2017; Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform,
    nonparametric, nonasymptotic confidence sequences", Annals of Statistics 2021, eq. (14)):
    the estimate's distance from the truth exceeds the radius at any look with probability at
    most alpha. Tightest when the variance is near `scale`^2.
    """
    ratio = scale**2 / variance
    return math.sqrt(variance * (1 + ratio) / ratio * (2 * math.log(1 / alpha) + math.log1p(ratio)))


def _one_sided_normal_log_evalue(z: float, ratio: float) -> float:
    """log of the N(0, tau^2)-half-normal mixture of Gaussian likelihood ratios, ratio = tau^2 / var."""
    shrink = ratio / (1 + ratio)
    return float(
        math.log(2) - 0.5 * math.log1p(ratio) + 0.5 * z * z * shrink + special.log_ndtr(z * math.sqrt(shrink))
    )


def independence_log_evalue(canary: Floats, baseline: Floats, prior_share: float) -> float:
    """log E for "the arm a count came from depends on its bin" (universal inference).

    Numerator: per bin, the canary share has a Beta prior centred on `prior_share`; the
    denominator is the likelihood at the best common share, which is at least the true one
    under independence, so the ratio is bounded by a martingale.
    """
    a = SCORE_PRIOR_STRENGTH * min(max(prior_share, 0.01), 0.99)
    b = SCORE_PRIOR_STRENGTH - a
    used = (canary + baseline) > 0
    numerator = float(np.sum(special.betaln(canary[used] + a, baseline[used] + b) - special.betaln(a, b)))
    total_c, total_b = float(canary.sum()), float(baseline.sum())
    share = total_c / (total_c + total_b)
    denominator = total_c * math.log(share) + total_b * math.log1p(-share) if 0 < share < 1 else 0.0
    return numerator - denominator


def p_from_log_e(log_e: float) -> float:
    """The always-valid p-value min(1, 1/E) of an e-value given as log E."""
    return math.exp(-log_e) if log_e > 0 else 1.0
