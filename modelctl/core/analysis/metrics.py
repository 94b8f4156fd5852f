"""The canary judge's metrics: one definition each (`METRICS`), its tests and its texts.

Each definition gives its evidence function (snapshot -> `Evidence`, with always-valid p-values
from `modelctl.core.analysis.sequential`), whether promotion needs it, whether it detects harm
(rollback) or a change, and its reasons and table row. A new metric is one `MetricDefinition`
appended to `METRICS`; `modelctl.core.analysis.judge` decides from whatever the table holds.
Canary against baseline:

- errors (required). Harm: given the traffic split s (the canary's share of requests), each
  error comes from the canary with probability s when the error rates are equal and less when
  the canary is better; the likelihood ratio of "errors come from the canary more often", mixed
  over rate ratios 1.25..10, is the e-value (the sequential test on which arm each error came
  from). Non-inferiority: canary rate < baseline rate + margin (`error_margin`), a one-sided
  normal-mixture sequential test (mSPRT; Johari, Pekelis and Walsh, "Always valid inference",
  2017) on the difference, with the variance taken at the margin (score-test style), so that a
  canary with no errors yet is not promoted on zero variance.
- latency (required), from the histograms, on what the buckets can resolve. t is the largest
  bucket bound with at least 1% of the pooled requests above it (at or below the pooled p99:
  the tail the data show, never a bound few requests reach). Non-inferiority of "canary p99
  within (1 + latency_margin) of the baseline's", read as: the canary exceeds T, the largest
  bound at most (1 + margin) t, at most rho times as often as the baseline exceeds t, where rho
  covers the part of the margin between T and (1 + margin) t at the tail's local slope k
  (rho = ((1 + margin) t / T)^k, k = -dlog S / dlog x between t and the bound below it in the
  pooled histogram: the survival function taken as a power law within a bucket). With buckets
  finer than the margin T = (1 + margin) t and rho = 1: the direct comparison. With buckets
  coarser than the margin T = t and rho = (1 + margin)^k: a non-inferiority margin on the
  exceedance rate at t, which the evidence says. Harm is the same comparison the other way:
  the canary exceeds T more than rho times as often as the baseline exceeds t (the origin test,
  as for errors, against the null ratio rho), so a canary slower than its baseline but within
  the margin is never rolled back for it.
- accuracy (required when `require_accuracy`), when feedback labels have arrived for both
  arms: harm is the origin test on wrong predictions among labelled requests; non-inferiority
  is the errors' test on the rate of wrong predictions with `accuracy_margin`. Label coverage
  (labelled / requests) is reported.
- reachability (counted at the mesh, format 2 with sources; never required): a canary with weight that the
  mesh sent no request at all while its baseline got N, its servers having counted none either
  (a route not in effect, no ready endpoint: requests that went nowhere near it). The likelihood
  ratio of "the canary gets none" against "it gets its weight's share s" is (1 - s)^-N, a
  martingale under the latter (Wald's SPRT of two simple hypotheses), so the always-valid p-value
  is (1 - s)^N.
- predicted-score distribution (change; warning or critical per `score_shift`): is
  the arm a score came from independent of its bin? A Bayes factor with a Beta mixture per bin
  against the best-fitting common split (universal inference: Wasserman, Ramdas and
  Balakrishnan, PNAS 2020; valid, conservative).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from modelctl.core.analysis.buckets import (
    bin_midpoints,
    exceedance_margin,
    histogram_quantile,
    margin_index,
    threshold_index,
)
from modelctl.core.analysis.margins import error_margin
from modelctl.core.analysis.sequential import (
    Floats,
    difference_confidence,
    difference_noninferiority,
    independence_log_evalue,
    origin_log_evalue,
    p_from_log_e,
)
from modelctl.core.analysis.snapshot import Snapshot
from modelctl.core.schema import Analysis

Severity = Literal["critical", "warning"]

# Alternatives the harm e-value mixes over: canary/baseline rate ratios and their prior weights.
# Doubling gets the most weight; 10x catches a broken canary within a few events.
HARM_RATIOS = np.array([1.25, 1.5, 2.0, 3.0, 5.0, 10.0])
HARM_WEIGHTS = np.array([0.1, 0.2, 0.3, 0.2, 0.1, 0.1])
# Alternatives of the latency non-inferiority e-value, as fractions of the allowed ratio rho.
BETTER_RATIOS = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.35, 0.2])
BETTER_WEIGHTS = np.full(BETTER_RATIOS.size, 1 / BETTER_RATIOS.size)
LATENCY_QUANTILE = 0.99


@dataclass(frozen=True)
class Evidence:
    """One metric's tests: estimates, always-valid p-values and what they showed.

    `margin` says in words what non-inferiority means for this metric ("0.50%", "10% on p99",
    ...); `note` what the data could not resolve and what was tested instead.
    """

    metric: str
    severity: Severity
    outcome: Literal["harm", "non-inferior", "inconclusive", "changed", "unchanged", "no data"]
    test: str
    baseline: dict[str, float]
    canary: dict[str, float]
    estimate: dict[str, float]
    confidence: dict[str, float] | None
    statistic: float | None
    p_value: float | None
    p_adjusted: float | None
    p_noninferior: float | None
    samples: dict[str, float]
    note: str = ""
    margin: str = ""


@dataclass(frozen=True)
class MetricDefinition:
    """One judged metric: a new metric is one of these appended to `METRICS`.

    Attributes
    ----------
    name : str
        The metric's name in the evidence and reasons.
    evidence : callable
        Snapshot -> Evidence (its tests, with always-valid p-values).
    required : callable
        Analysis settings -> whether promotion needs the metric shown non-inferior.
    effect : {"harm", "change"}
        What a rejected test shows: harm (rollback when critical) or a change.
    severity : callable
        Analysis settings -> "critical" (in the Holm family, can roll back) or "warning".
    harm_reason, ok_reason : callable
        Evidence -> the one-line reason of a rollback or of a promotion.
    row : callable
        (Evidence, arm values, samples) -> the arm's cell in the evidence table.
    early : bool
        Its harm test reads only counts (no threshold estimated from the data), so it is valid
        from the first request: with mesh counts (format 2) it rolls back before min_requests.
    mesh_only : bool
        Judged only on counts from the mesh (a format-2 snapshot with `sources`): snapshots
        counted at the servers replay without it.
    """

    name: str
    evidence: Callable[[Snapshot], Evidence]
    required: Callable[[Analysis], bool]
    effect: Literal["harm", "change"]
    severity: Callable[[Analysis], Severity]
    harm_reason: Callable[[Evidence], str]
    ok_reason: Callable[[Evidence], str]
    row: Callable[[Evidence, dict[str, float], float], str]
    early: bool = False
    mesh_only: bool = False


# ---------------------------------------------------------------- errors


def _errors(snap: Snapshot) -> Evidence:
    base, can = snap.baseline, snap.canary
    settings = snap.analysis
    samples = {"baseline": base.requests, "canary": can.requests}
    if base.requests == 0 or can.requests == 0:
        return _no_data("errors", "critical", samples)
    margin = error_margin(settings, base.errors / base.requests)
    return _rate_evidence(
        "errors", can.errors, can.requests, base.errors, base.requests, margin=margin, alpha=settings.alpha
    )


def _rate_evidence(
    metric: str, bad_c: float, n_c: float, bad_b: float, n_b: float, *, margin: float, alpha: float
) -> Evidence:
    """Harm and non-inferiority on the rate of bad outcomes (errors, wrong predictions)."""
    share = n_c / (n_c + n_b)
    log_harm = origin_log_evalue(bad_c, bad_b, share, HARM_RATIOS, HARM_WEIGHTS)
    rate_c, rate_b = bad_c / n_c, bad_b / n_b
    z, log_ok = difference_noninferiority(bad_c, n_c, bad_b, n_b, margin)
    low, high = difference_confidence(bad_c, n_c, bad_b, n_b, margin=margin, alpha=alpha)
    p_ok = p_from_log_e(log_ok)
    return Evidence(
        metric=metric,
        severity="critical",
        outcome="non-inferior" if p_ok <= alpha else "inconclusive",
        test="harm: mixture SPRT on which arm each bad outcome came from; non-inferiority: normal-mixture mSPRT",
        baseline={"rate": rate_b, "count": bad_b},
        canary={"rate": rate_c, "count": bad_c},
        estimate={"difference": rate_c - rate_b, "canary_share": share, "margin": margin},
        confidence={"lower": low, "upper": high, "level": 1 - alpha},
        statistic=z,
        p_value=p_from_log_e(log_harm),
        p_adjusted=None,
        p_noninferior=p_ok,
        samples={"baseline": n_b, "canary": n_c},
        margin=_pct(margin),
    )


def _errors_harm(e: Evidence) -> str:
    return (
        f"errors: the canary's error rate is higher than the baseline's "
        f"({_pct(e.canary['rate'])} vs {_pct(e.baseline['rate'])}; adjusted always-valid p = {e.p_adjusted:.3g})"
    )


def _errors_ok(e: Evidence) -> str:
    return (
        f"errors: canary error rate is within {e.margin} of the baseline's "
        f"({_pct(e.canary['rate'])} vs {_pct(e.baseline['rate'])}; p = {_p(e.p_noninferior)})"
    )


def _errors_row(e: Evidence, values: dict[str, float], n: float) -> str:
    return f"{values['rate']:.2%} of {n:,.0f}"


# ---------------------------------------------------------------- latency


def _latency(snap: Snapshot) -> Evidence:
    settings = snap.analysis
    bounds = np.asarray(snap.baseline.latency_seconds.le)
    base = snap.baseline.latency_seconds.cumulative()
    can = snap.canary.latency_seconds.cumulative()
    samples = {"baseline": float(base[-1]), "canary": float(can[-1])}
    if base[-1] == 0 or can[-1] == 0 or bounds.size < 2:
        return _no_data("latency", "critical", samples)
    pooled = base + can
    t = threshold_index(pooled, LATENCY_QUANTILE)
    relaxed = margin_index(bounds, t, settings.latency_margin)
    rho, slope = exceedance_margin(bounds, pooled, t, relaxed, settings.latency_margin)
    over_b, over_c, over_c_relaxed = base[-1] - base[t], can[-1] - can[t], can[-1] - can[relaxed]
    share = can[-1] / (can[-1] + base[-1])
    # Harm is a tail beyond the margin, not any slower tail: a canary within the margin that
    # its non-inferiority test cannot show yet holds; it is not rolled back.
    log_harm = origin_log_evalue(
        over_c_relaxed, over_b, share, rho * HARM_RATIOS, HARM_WEIGHTS, null_ratio=rho
    )
    note = _latency_note(bounds, pooled, t, relaxed, rho=rho, slope=slope, margin=settings.latency_margin)
    if over_b == 0 and over_c == 0:
        # Every request of both arms is within t: the histogram cannot tell the tails apart,
        # and both tails are within t, the resolution it offers.
        p_ok, note = 0.0, f"every request of both arms is within the bucket bound {bounds[t]:g}s"
    else:
        log_ok = origin_log_evalue(
            over_c_relaxed, over_b, share, rho * BETTER_RATIOS, BETTER_WEIGHTS, null_ratio=rho
        )
        p_ok = p_from_log_e(log_ok)
    p99_b, p99_c = histogram_quantile(bounds, base, 0.99), histogram_quantile(bounds, can, 0.99)
    rate_b, rate_c = over_b / base[-1], over_c / can[-1]
    return Evidence(
        metric="latency",
        severity="critical",
        outcome="non-inferior" if p_ok <= settings.alpha else "inconclusive",
        test="mixture SPRTs on which arm each request slower than the threshold bound came from",
        baseline={"p99": p99_b, "rate": rate_b, "slow": over_b},
        canary={
            "p99": p99_c,
            "rate": rate_c,
            "slow": over_c,
            "slow_at_margin": over_c_relaxed,
            "rate_at_margin": over_c_relaxed / can[-1],
        },
        estimate={
            "p99_ratio": p99_c / p99_b if p99_b > 0 else math.nan,
            "threshold_seconds": float(bounds[t]),
            "threshold_quantile": float(pooled[t] / pooled[-1]),
            "margin_threshold_seconds": float(bounds[relaxed]),
            "rate_ratio": rate_c / rate_b if rate_b > 0 else math.nan,
            "allowed_ratio": rho,
            "tail_slope": slope,
        },
        confidence=None,
        statistic=log_harm,
        p_value=p_from_log_e(log_harm),
        p_adjusted=None,
        p_noninferior=p_ok,
        samples=samples,
        note=note,
        margin=f"{settings.latency_margin:.0%}",
    )


def _latency_note(
    bounds: Floats, pooled: Floats, t: int, relaxed: int, *, rho: float, slope: float, margin: float
) -> str:
    quantile = pooled[t] / pooled[-1]
    at = f"tested at {bounds[t]:g}s, the bucket bound at p{100 * quantile:.3g} of the pooled requests"
    if rho == 1.0:
        return at
    if relaxed == t:
        return (
            f"buckets around {bounds[t]:g}s are coarser than the {margin:.0%} margin: {at}; non-inferiority is "
            f"the canary's rate of requests slower than {bounds[t]:g}s at most {rho:.3g}x the baseline's "
            f"(the margin at the tail's local slope {slope:.3g})"
        )
    return (
        f"{at}; the canary is compared at {bounds[relaxed]:g}s, and the rest of the {margin:.0%} margin "
        f"is allowed as a ratio of {rho:.3g} (the tail's local slope {slope:.3g})"
    )


def _latency_harm(e: Evidence) -> str:
    return (
        f"latency: the canary's tail is beyond the {e.margin} margin: "
        f"{_pct(e.canary['rate_at_margin'])} of its requests slower than {e.estimate['margin_threshold_seconds']:g}s "
        f"against {_pct(e.baseline['rate'])} of the baseline's slower than {e.estimate['threshold_seconds']:g}s, "
        f"more than the {e.estimate['allowed_ratio']:.3g}x allowed (adjusted always-valid p = {e.p_adjusted:.3g})"
    )


def _latency_ok(e: Evidence) -> str:
    if e.note.startswith("buckets around"):
        return (
            f"latency: the canary's share of requests slower than {e.estimate['threshold_seconds']:g}s is within "
            f"{e.estimate['allowed_ratio']:.3g}x the baseline's ({_pct(e.canary['rate'])} vs "
            f"{_pct(e.baseline['rate'])}; p = {_p(e.p_noninferior)}; the buckets cannot resolve a {e.margin} p99 margin)"
        )
    return (
        f"latency: canary p99 is within {e.margin} of the baseline's "
        f"({_seconds(e.canary['p99'])} vs {_seconds(e.baseline['p99'])}; p = {_p(e.p_noninferior)})"
    )


def _latency_row(e: Evidence, values: dict[str, float], n: float) -> str:
    return f"p99 {values['p99'] * 1000:,.0f}ms of {n:,.0f}"


# ---------------------------------------------------------------- accuracy


def _accuracy(snap: Snapshot) -> Evidence:
    (labelled_b, wrong_b), (labelled_c, wrong_c) = snap.baseline.labels(), snap.canary.labels()
    coverage = {
        "baseline_coverage": labelled_b / snap.baseline.requests if snap.baseline.requests else 0.0,
        "canary_coverage": labelled_c / snap.canary.requests if snap.canary.requests else 0.0,
    }
    if labelled_b == 0 or labelled_c == 0:
        return replace(
            _no_data("accuracy", "critical", {"baseline": labelled_b, "canary": labelled_c}),
            estimate=coverage,
        )
    settings = snap.analysis
    rated = _rate_evidence(
        "accuracy",
        wrong_c,
        labelled_c,
        wrong_b,
        labelled_b,
        margin=settings.accuracy_margin,
        alpha=settings.alpha,
    )
    return replace(
        rated,
        test="on labelled predictions: " + rated.test,
        baseline={**rated.baseline, "accuracy": 1 - rated.baseline["rate"]},
        canary={**rated.canary, "accuracy": 1 - rated.canary["rate"]},
        estimate={**rated.estimate, **coverage},
        note=f"label coverage {coverage['canary_coverage']:.1%} (canary), {coverage['baseline_coverage']:.1%} (baseline)",
    )


def _accuracy_harm(e: Evidence) -> str:
    return (
        f"accuracy: the canary's accuracy on labelled requests is lower than the baseline's "
        f"({_pct(e.canary['accuracy'])} vs {_pct(e.baseline['accuracy'])}; adjusted always-valid p = {e.p_adjusted:.3g})"
    )


def _accuracy_ok(e: Evidence) -> str:
    return (
        f"accuracy: canary accuracy is within {e.margin} of the baseline's "
        f"({_pct(e.canary['accuracy'])} vs {_pct(e.baseline['accuracy'])}; p = {_p(e.p_noninferior)}; {e.note})"
    )


def _accuracy_row(e: Evidence, values: dict[str, float], n: float) -> str:
    return f"{values['accuracy']:.2%} of {n:,.0f} labelled"


# ---------------------------------------------------------------- reachability


def _reachability(snap: Snapshot) -> Evidence:
    can, base = snap.canary, snap.baseline
    samples = {"baseline": base.requests, "canary": can.requests}
    share = can.weight / (can.weight + base.weight) if can.weight + base.weight > 0 else 0.0
    baseline, canary = {"requests": base.requests}, {"requests": can.requests, "weight": can.weight}
    served = can.server.requests if can.server is not None else 0.0
    if can.requests > 0 or base.requests == 0 or not 0 < share < 1 or served > 0:
        note = (
            f"the mesh counted no request of the canary, but its servers counted {served:,.0f}: "
            f"check monitoring.mesh ({snap.mesh}) names the mesh that routes it"
            if can.requests == 0 and served > 0
            else ""
        )
        outcome: Literal["unchanged", "no data"] = "unchanged" if can.requests > 0 else "no data"
        return replace(
            _no_data("reachability", "critical", samples),
            outcome=outcome,
            note=note,
            baseline=baseline,
            canary=canary,
        )
    log_e = -base.requests * math.log1p(-share)
    return Evidence(
        metric="reachability",
        severity="critical",
        outcome="inconclusive",
        test="SPRT of 'the canary gets none of the requests' against 'it gets its weight's share'",
        baseline=baseline,
        canary=canary,
        estimate={"share": share},
        confidence=None,
        statistic=log_e,
        p_value=p_from_log_e(log_e),
        p_adjusted=None,
        p_noninferior=None,
        samples=samples,
    )


def _reachability_harm(e: Evidence) -> str:
    return (
        f"unreachable: the mesh sent the canary none of its {e.estimate['share']:.0%} share of requests, "
        f"and the baseline {e.baseline['requests']:,.0f} (adjusted always-valid p = {e.p_adjusted:.3g}); "
        "check that its pods are ready and its route is applied"
    )


def _reachability_ok(e: Evidence) -> str:
    return "reachability: the mesh sends the canary requests"


def _reachability_row(e: Evidence, values: dict[str, float], n: float) -> str:
    return f"{values['requests']:,.0f} requests"


# ---------------------------------------------------------------- predicted scores


def _score_severity(settings: Analysis) -> Severity:
    return "critical" if settings.score_shift == "critical" else "warning"


def _scores(snap: Snapshot) -> Evidence:
    severity = _score_severity(snap.analysis)
    if snap.baseline.score is None or snap.canary.score is None:
        return _no_data("score", severity, {"baseline": 0.0, "canary": 0.0})
    base = np.diff(np.r_[0.0, snap.baseline.score.cumulative()])
    can = np.diff(np.r_[0.0, snap.canary.score.cumulative()])
    samples = {"baseline": float(base.sum()), "canary": float(can.sum())}
    if base.sum() == 0 or can.sum() == 0:
        return _no_data("score", severity, samples)
    weights = snap.canary.weight + snap.baseline.weight
    prior_share = snap.canary.weight / weights if weights > 0 else 0.5
    log_e = independence_log_evalue(can, base, prior_share)
    p_value = p_from_log_e(log_e)
    mids = bin_midpoints(np.asarray(snap.baseline.score.le))
    mean_b, mean_c = float(mids @ base / base.sum()), float(mids @ can / can.sum())
    tvd = float(0.5 * np.abs(can / can.sum() - base / base.sum()).sum())
    return Evidence(
        metric="score",
        severity=severity,
        outcome="changed" if p_value <= snap.analysis.alpha else "unchanged",
        test="Bayes factor of arm-by-bin dependence against the best common split (universal inference)",
        baseline={"mean": mean_b},
        canary={"mean": mean_c},
        estimate={"mean_difference": mean_c - mean_b, "total_variation": tvd},
        confidence=None,
        statistic=log_e,
        p_value=p_value,
        p_adjusted=None,
        p_noninferior=None,
        samples=samples,
    )


def _score_harm(e: Evidence) -> str:
    return f"score: the predicted-score distribution changed (adjusted always-valid p = {e.p_adjusted:.3g})"


def _score_ok(e: Evidence) -> str:
    return "score: the predicted-score distribution shows no change"


def _score_row(e: Evidence, values: dict[str, float], n: float) -> str:
    return f"mean {values['mean']:.3f} of {n:,.0f}"


def _no_data(metric: str, severity: Severity, samples: dict[str, float]) -> Evidence:
    return Evidence(metric, severity, "no data", "", {}, {}, {}, None, None, None, None, None, samples)


def _always(settings: Analysis) -> bool:
    return True


def _never(settings: Analysis) -> bool:
    return False


def _critical(settings: Analysis) -> Severity:
    return "critical"


METRICS: tuple[MetricDefinition, ...] = (
    MetricDefinition(
        "errors", _errors, _always, "harm", _critical, _errors_harm, _errors_ok, _errors_row, early=True
    ),
    MetricDefinition(
        "latency", _latency, _always, "harm", _critical, _latency_harm, _latency_ok, _latency_row
    ),
    MetricDefinition(
        "accuracy",
        _accuracy,
        lambda s: s.require_accuracy,
        "harm",
        _critical,
        _accuracy_harm,
        _accuracy_ok,
        _accuracy_row,
    ),
    MetricDefinition("score", _scores, _never, "change", _score_severity, _score_harm, _score_ok, _score_row),
    MetricDefinition(
        "reachability",
        _reachability,
        _never,
        "harm",
        _critical,
        _reachability_harm,
        _reachability_ok,
        _reachability_row,
        early=True,
        mesh_only=True,
    ),
)
_BY_NAME = {d.name: d for d in METRICS}


def definition(metric: str) -> MetricDefinition:
    """The definition of a metric by name.

    Raises
    ------
    KeyError
        No metric has that name.
    """
    return _BY_NAME[metric]


def describe(e: Evidence, arm: Literal["canary", "baseline"]) -> str:
    """One arm's cell of the evidence table ("1.00% of 5,000", "p99 320ms of 5,000")."""
    values = e.canary if arm == "canary" else e.baseline
    n = e.samples.get(arm, 0.0)
    if e.outcome == "no data" or not values:
        return f"n={n:,.0f}"
    return definition(e.metric).row(e, values, n)


def pending_reason(e: Evidence, settings: Analysis) -> str:
    """Why a required metric does not let the canary be promoted yet."""
    if e.outcome == "no data":
        return f"{e.metric}: no data yet"
    return (
        f"{e.metric}: not yet shown within the {e.margin} margin "
        f"(non-inferiority p = {_p(e.p_noninferior)}, needs <= {settings.alpha:g})"
    )


# ---------------------------------------------------------------- formatting


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if math.isfinite(value) else "n/a"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
