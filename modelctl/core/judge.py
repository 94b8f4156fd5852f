"""The canary judge: one metrics snapshot in, one decision out (promote, hold or rollback).

`judge(snapshot)` is a pure function, so any decision can be recomputed from the snapshot it
was made on. The snapshot holds cumulative counts since the canary step began, and the
analysis job runs the judge again at every look (say every minute); every test here is
therefore sequential, with always-valid p-values: the chance that *any* look ever rejects a
true hypothesis is at most alpha, however often the judge looks. Each p-value is 1/E for an
e-value E (a nonnegative supermartingale under the null) computed from the cumulative counts
alone, so Ville's inequality gives the guarantee without remembering earlier looks.

The metrics, canary against baseline:

- errors (critical). Harm: given the traffic split s (the canary's share of requests), each
  error comes from the canary with probability s when the error rates are equal and less when
  the canary is better; the likelihood ratio of "errors come from the canary more often", mixed
  over rate ratios 1.25..10, is the e-value (the sequential test on which arm each error came
  from). Non-inferiority: canary rate < baseline rate + margin, the margin being the larger of
  error_margin (absolute) and error_margin_relative x the baseline rate, a one-sided
  normal-mixture sequential test (mSPRT) on the difference, with the variance taken at the
  margin (score-test style), so that a canary with no errors yet is not promoted on
  zero variance.
- latency (critical), from the histograms. t is the bucket bound at the pooled 99th
  percentile. Harm: the canary exceeds t more often than the baseline (the same test as for
  errors, on exceedances). Non-inferiority: the canary exceeds T, the largest bound at most
  (1 + latency_margin) * t, less often than the baseline exceeds t, i.e. the canary's p99 is
  below (1 + margin) times the baseline's. With buckets coarser than the margin T = t and the
  test is stricter than asked (never laxer).
- predicted-score distribution (behaviour change; warning or critical per `score_shift`): is
  the arm a score came from independent of its bin? A Bayes factor with a Beta mixture per bin
  against the best-fitting common split (universal inference: valid, conservative).

Rollback needs evidence of harm on a critical metric, Holm-corrected across them. Promotion
needs evidence of non-inferiority on errors and latency, each at alpha (a decision needing
all of them holds its level without correction), and no evidence of harm. Before both arms
have `min_requests` requests the judge holds, whatever the data say: never a rollback on too
little data.

Where the guarantee is approximate: the traffic split is the realized share of requests (it
equals the routing weight up to noise, and stays right when routing departs from the weights);
the latency threshold t is re-read from the pooled histogram at each look (label-free, so
valid at any one look; it settles within a few thousand requests); the non-inferiority test
for errors is asymptotic (normal, with estimated variance). bench/judge measures the result:
1-4% false rollbacks and at most 1.5% false promotions at the margin, over 200 looks.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import Field, ValidationError, field_validator, model_validator
from scipy import special

from modelctl.core.drift.statistics import adjust_pvalues
from modelctl.core.errors import UserError, collect
from modelctl.core.schema import Analysis, ModelName, Strict, VersionName
from modelctl.core.state import pydantic_errors

JUDGE_VERSION = 1
Action = Literal["promote", "hold", "rollback"]
Floats = npt.NDArray[np.float64]

# Alternatives the harm e-value mixes over: canary/baseline rate ratios and their prior weights.
# Doubling gets the most weight; 10x catches a broken canary within a few events.
HARM_RATIOS = np.array([1.25, 1.5, 2.0, 3.0, 5.0, 10.0])
HARM_WEIGHTS = np.array([0.1, 0.2, 0.3, 0.2, 0.1, 0.1])
# Alternatives of the latency non-inferiority e-value: the canary's rate of requests slower
# than (1 + margin) t over the baseline's rate slower than t.
BETTER_RATIOS = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.35, 0.2])
BETTER_WEIGHTS = np.full(BETTER_RATIOS.size, 1 / BETTER_RATIOS.size)
# Scale of the normal mixture for the error-rate difference when the margin is zero.
MIN_ERROR_SCALE = 0.001
LATENCY_QUANTILE = 0.99
BOUND_TOLERANCE = 1e-3
# Beta prior strength per score bin (in pseudo-requests), centred on the configured split.
SCORE_PRIOR_STRENGTH = 2.0


# ---------------------------------------------------------------- the snapshot


class Histogram(Strict):
    """A Prometheus histogram: cumulative counts per upper bound `le`, the last bound +Inf."""

    le: list[float] = Field(min_length=1)
    counts: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]

    @field_validator("le")
    @classmethod
    def _bounds(cls, le: list[float]) -> list[float]:
        if any(math.isnan(b) for b in le) or le[-1] != math.inf:
            raise ValueError('the last bucket bound must be +Inf and none NaN; end le with "+Inf"')
        if any(b <= a for a, b in itertools.pairwise(le)):
            raise ValueError("bucket bounds must increase; list le smallest first")
        return le

    @model_validator(mode="after")
    def _cumulative(self) -> Histogram:
        if len(self.counts) != len(self.le):
            raise ValueError(f"{len(self.counts)} counts for {len(self.le)} bounds; give one count per bound")
        if any(b < a * (1 - 1e-9) - 1e-9 for a, b in zip(self.counts, self.counts[1:], strict=False)):
            raise ValueError("bucket counts decrease; give cumulative counts as Prometheus exposes them")
        return self

    def cumulative(self) -> Floats:
        return np.maximum.accumulate(np.asarray(self.counts, dtype=np.float64))


class Arm(Strict):
    """One version's cumulative counts since the canary step began."""

    version: VersionName
    weight: Annotated[float, Field(ge=0, le=100)]
    requests: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    errors: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    latency_seconds: Histogram
    score: Histogram | None = None

    @model_validator(mode="after")
    def _errors_are_requests(self) -> Arm:
        if self.errors > self.requests:
            raise ValueError(
                f"errors ({self.errors:g}) exceed requests ({self.requests:g}); check the counters"
            )
        return self


class Snapshot(Strict):
    model: ModelName
    stack: Annotated[str, Field(min_length=1)]
    taken_at: datetime
    baseline: Arm
    canary: Arm
    analysis: Analysis

    @field_validator("taken_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("taken_at has no time zone; write it in UTC like 2026-01-31T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _comparable(self) -> Snapshot:
        if self.canary.version == self.baseline.version:
            raise ValueError(f"canary and baseline are both {self.canary.version}; compare two versions")
        if self.canary.latency_seconds.le != self.baseline.latency_seconds.le:
            raise ValueError("the arms' latency buckets differ; collect both with the same bounds")
        scores = (self.canary.score, self.baseline.score)
        if all(scores) and self.canary.score.le != self.baseline.score.le:  # type: ignore[union-attr]
            raise ValueError("the arms' score buckets differ; collect both with the same bounds")
        return self


def parse_snapshot(data: Any, source: str = "snapshot") -> Snapshot:
    """Validate a snapshot; every problem becomes a one-line UserError naming `source`.

    Raises
    ------
    UserError, UserErrors
        One line per problem, naming the key.
    """
    if not isinstance(data, dict):
        raise UserError(source, "the snapshot is not a JSON object", "write the collector's snapshot object")
    try:
        return Snapshot.model_validate(data)
    except ValidationError as exc:
        collect(pydantic_errors(exc, source, data))
        raise  # unreachable: collect raises for a non-empty list


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Evidence:
    """One metric's tests: estimates, always-valid p-values and what they showed."""

    metric: str
    severity: Literal["critical", "warning"]
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


@dataclass(frozen=True)
class Decision:
    action: Action
    reasons: list[str]
    warnings: list[str]
    evidence: list[Evidence]
    model: str
    stack: str
    baseline_version: str
    canary_version: str
    taken_at: str
    alpha: float
    snapshot_sha256: str
    judge_version: int = JUDGE_VERSION
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _finite(asdict(self))
        return result


def judge(snapshot: dict[str, Any] | Snapshot, source: str = "snapshot") -> Decision:
    """Decide promote, hold or rollback from one snapshot (see the module docstring).

    Parameters
    ----------
    snapshot : dict or Snapshot
        The metrics of the baseline and canary arms, their analysis settings and the time taken
        (the JSON form `modelctl canary judge` reads).
    source : str
        What to name in errors (a file path).

    Returns
    -------
    Decision
        The action ("promote", "hold" or "rollback"), its reasons, warnings, and the evidence per
        metric with raw and Holm-adjusted always-valid p-values.

    Raises
    ------
    UserError, UserErrors
        The snapshot is invalid, one line per problem.
    """
    snap = snapshot if isinstance(snapshot, Snapshot) else parse_snapshot(snapshot, source)
    settings = snap.analysis
    evidence = _correct([_errors(snap), _latency(snap), _scores(snap)], settings.alpha)
    action, reasons = _decide(snap, evidence)
    warnings = [
        f"score: the predicted-score distribution differs from the baseline's (always-valid p = {e.p_value:.3g})"
        for e in evidence
        if e.severity == "warning" and e.p_value is not None and e.p_value <= settings.alpha
    ]
    return Decision(
        action=action,
        reasons=reasons,
        warnings=warnings,
        evidence=evidence,
        model=snap.model,
        stack=snap.stack,
        baseline_version=snap.baseline.version,
        canary_version=snap.canary.version,
        taken_at=snap.taken_at.isoformat(),
        alpha=settings.alpha,
        snapshot_sha256=snapshot_digest(snap),
        settings=settings.model_dump(),
    )


def _correct(evidence: list[Evidence], alpha: float) -> list[Evidence]:
    """Holm across the critical harm tests: rollback when any adjusted p-value is <= alpha."""
    family = [i for i, e in enumerate(evidence) if e.severity == "critical" and e.p_value is not None]
    adjusted = adjust_pvalues([evidence[i].p_value or 0.0 for i in family], "holm")
    corrected = list(evidence)
    for i, p_adj in zip(family, map(float, adjusted), strict=True):
        outcome = evidence[i].outcome
        if p_adj <= alpha:
            outcome = "changed" if evidence[i].metric == "score" else "harm"
        corrected[i] = replace(evidence[i], p_adjusted=p_adj, outcome=outcome)
    return corrected


def snapshot_digest(snapshot: Snapshot) -> str:
    """sha256 of the snapshot's canonical JSON (sorted keys), to match decisions with snapshots."""
    canonical = orjson.dumps(snapshot.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _decide(snap: Snapshot, evidence: list[Evidence]) -> tuple[Action, list[str]]:
    minimum = snap.analysis.min_requests
    short = [
        f"{name} has {arm.requests:g} of the {minimum} requests needed to judge"
        for name, arm in (("canary", snap.canary), ("baseline", snap.baseline))
        if arm.requests < minimum
    ]
    if short:
        return "hold", ["not enough data: " + "; ".join(short)]
    harmful = [e for e in evidence if e.outcome in ("harm", "changed") and e.severity == "critical"]
    if harmful:
        return "rollback", [_harm_reason(e) for e in harmful]
    required = [e for e in evidence if e.metric in ("errors", "latency")]
    pending = [e for e in required if e.outcome != "non-inferior"]
    if not pending:
        return "promote", [_promote_reason(e, snap.analysis) for e in required]
    return "hold", [_pending_reason(e, snap.analysis) for e in pending]


def _harm_reason(e: Evidence) -> str:
    if e.metric == "score":
        return (
            f"score: the predicted-score distribution changed (adjusted always-valid p = {e.p_adjusted:.3g})"
        )
    what = {"errors": "error rate", "latency": "share of requests slower than the pooled p99"}[e.metric]
    return (
        f"{e.metric}: the canary's {what} is higher than the baseline's "
        f"({_pct(e.canary['rate'])} vs {_pct(e.baseline['rate'])}; adjusted always-valid p = {e.p_adjusted:.3g})"
    )


def _promote_reason(e: Evidence, settings: Analysis) -> str:
    if e.metric == "errors":
        return (
            f"errors: canary error rate is within {_pct(e.estimate['margin'])} of the baseline's "
            f"({_pct(e.canary['rate'])} vs {_pct(e.baseline['rate'])}; p = {_p(e.p_noninferior)})"
        )
    return (
        f"latency: canary p99 is within {settings.latency_margin:.0%} of the baseline's "
        f"({_seconds(e.canary['p99'])} vs {_seconds(e.baseline['p99'])}; p = {_p(e.p_noninferior)})"
    )


def _pending_reason(e: Evidence, settings: Analysis) -> str:
    if e.outcome == "no data":
        return f"{e.metric}: no data yet"
    margin = _pct(e.estimate["margin"]) if e.metric == "errors" else f"{settings.latency_margin:.0%}"
    return (
        f"{e.metric}: not yet shown within the {margin} margin "
        f"(non-inferiority p = {_p(e.p_noninferior)}, needs <= {settings.alpha:g})"
    )


# ---------------------------------------------------------------- metrics


def error_margin(settings: Analysis, baseline_rate: float) -> float:
    """The non-inferiority margin on the error rate: absolute, widened in proportion to a high
    baseline rate (half a point is a tenth of a 5% rate: too little data would ever show it)."""
    return max(settings.error_margin, settings.error_margin_relative * baseline_rate)


def _errors(snap: Snapshot) -> Evidence:
    base, can = snap.baseline, snap.canary
    settings = snap.analysis
    samples = {"baseline": base.requests, "canary": can.requests}
    if base.requests == 0 or can.requests == 0:
        return _no_data("errors", "critical", samples)
    share = can.requests / (can.requests + base.requests)
    log_harm = origin_log_evalue(can.errors, base.errors, share, HARM_RATIOS, HARM_WEIGHTS)
    rate_c, rate_b = can.errors / can.requests, base.errors / base.requests
    margin = error_margin(settings, rate_b)
    z, log_ok = difference_noninferiority(can.errors, can.requests, base.errors, base.requests, margin)
    low, high = difference_confidence(
        can.errors,
        can.requests,
        base.errors,
        base.requests,
        margin=margin,
        alpha=settings.alpha,
    )
    p_ok = _p_from_log_e(log_ok)
    return Evidence(
        metric="errors",
        severity="critical",
        outcome="non-inferior" if p_ok <= settings.alpha else "inconclusive",
        test="harm: mixture SPRT on which arm each error came from; non-inferiority: normal-mixture mSPRT",
        baseline={"rate": rate_b, "errors": base.errors},
        canary={"rate": rate_c, "errors": can.errors},
        estimate={"difference": rate_c - rate_b, "canary_share": share, "margin": margin},
        confidence={"lower": low, "upper": high, "level": 1 - settings.alpha},
        statistic=z,
        p_value=_p_from_log_e(log_harm),
        p_adjusted=None,
        p_noninferior=p_ok,
        samples=samples,
    )


def _latency(snap: Snapshot) -> Evidence:
    settings = snap.analysis
    bounds = np.asarray(snap.baseline.latency_seconds.le)
    base = snap.baseline.latency_seconds.cumulative()
    can = snap.canary.latency_seconds.cumulative()
    samples = {"baseline": float(base[-1]), "canary": float(can[-1])}
    if base[-1] == 0 or can[-1] == 0 or bounds.size < 2:
        return _no_data("latency", "critical", samples)
    t = threshold_index(base + can, LATENCY_QUANTILE)
    relaxed = margin_index(bounds, t, settings.latency_margin)
    over_b, over_c, over_c_relaxed = base[-1] - base[t], can[-1] - can[t], can[-1] - can[relaxed]
    share = can[-1] / (can[-1] + base[-1])
    log_harm = origin_log_evalue(over_c, over_b, share, HARM_RATIOS, HARM_WEIGHTS)
    note = ""
    if over_b == 0 and over_c == 0:
        # Every request of both arms is within t: the histogram cannot tell the tails apart,
        # and both p99s are at most t, the resolution it offers.
        p_ok, note = 0.0, f"both arms' p99 are within the bucket bound {bounds[t]:g}s"
    else:
        p_ok = _p_from_log_e(origin_log_evalue(over_c_relaxed, over_b, share, BETTER_RATIOS, BETTER_WEIGHTS))
    if relaxed == t and settings.latency_margin > 0:
        note = note or "buckets coarser than the margin: non-inferiority is tested with no margin"
    p99_b, p99_c = histogram_quantile(bounds, base, 0.99), histogram_quantile(bounds, can, 0.99)
    rate_b, rate_c = over_b / base[-1], over_c / can[-1]
    return Evidence(
        metric="latency",
        severity="critical",
        outcome="non-inferior" if p_ok <= settings.alpha else "inconclusive",
        test="mixture SPRTs on which arm each request slower than the pooled p99 bound came from",
        baseline={"p99": p99_b, "rate": rate_b, "slow": over_b},
        canary={"p99": p99_c, "rate": rate_c, "slow": over_c, "slow_at_margin": over_c_relaxed},
        estimate={
            "p99_ratio": p99_c / p99_b if p99_b > 0 else math.nan,
            "threshold_seconds": float(bounds[t]),
            "margin_threshold_seconds": float(bounds[relaxed]),
            "rate_ratio": rate_c / rate_b if rate_b > 0 else math.nan,
        },
        confidence=None,
        statistic=log_harm,
        p_value=_p_from_log_e(log_harm),
        p_adjusted=None,
        p_noninferior=p_ok,
        samples=samples,
        note=note,
    )


def _scores(snap: Snapshot) -> Evidence:
    severity: Literal["critical", "warning"] = (
        "critical" if snap.analysis.score_shift == "critical" else "warning"
    )
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
    p_value = _p_from_log_e(log_e)
    mids = _bin_midpoints(np.asarray(snap.baseline.score.le))
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


def _no_data(metric: str, severity: Literal["critical", "warning"], samples: dict[str, float]) -> Evidence:
    return Evidence(metric, severity, "no data", "", {}, {}, {}, None, None, None, None, None, samples)


# ---------------------------------------------------------------- sequential tests


def origin_log_evalue(
    events_canary: float,
    events_baseline: float,
    share: float,
    ratios: Floats,
    weights: Floats,
) -> float:
    """log E for "the canary's event rate / the baseline's is one of `ratios`" against ratio 1.

    Each event comes from the canary with probability q = s r / (s r + 1 - s) when the rate
    ratio is r and the canary's traffic share is s. Under r = 1, q = s and the likelihood ratio
    of every alternative is a martingale; under r on the other side of 1 than all `ratios`, a
    supermartingale. Their `weights`-mixture is the e-value.
    """
    if not 0 < share < 1 or events_canary + events_baseline == 0:
        return 0.0
    q = share * ratios / (share * ratios + 1 - share)
    log_lr = events_canary * np.log(q / share) + events_baseline * np.log((1 - q) / (1 - share))
    return float(special.logsumexp(log_lr, b=weights))


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
    ratio = max(margin, MIN_ERROR_SCALE) ** 2 / variance
    radius = math.sqrt(variance * (1 + ratio) / ratio * (2 * math.log(1 / alpha) + math.log1p(ratio)))
    centre = errors_c / n_c - errors_b / n_b
    return centre - radius, centre + radius


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


def threshold_index(cumulative: Floats, quantile: float) -> int:
    """Index of the first finite bound whose cumulative count reaches `quantile` of the total."""
    reached = int(np.searchsorted(cumulative, quantile * cumulative[-1], side="left"))
    return min(reached, cumulative.size - 2)


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


def _p_from_log_e(log_e: float) -> float:
    return math.exp(-log_e) if log_e > 0 else 1.0


def _bin_midpoints(bounds: Floats) -> Floats:
    finite = bounds[:-1]
    lower = np.r_[min(0.0, float(finite[0])) if finite.size else 0.0, finite]
    upper = np.r_[finite, finite[-1] if finite.size else 1.0]
    mids: Floats = (lower + upper) / 2
    return mids


# ---------------------------------------------------------------- formatting


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if math.isfinite(value) else "n/a"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
