"""The canary judge: one metrics snapshot in, one decision out (promote, hold or rollback).

`judge(snapshot)` is a pure function, so any decision can be recomputed from the snapshot it
was made on. The snapshot holds cumulative counts since the canary step began, and the
analysis job runs the judge again at every look (say every five minutes); every test here is
therefore sequential, with always-valid p-values: the chance that *any* look ever rejects a
true hypothesis is at most alpha, however often the judge looks. Each p-value is 1/E for an
e-value E (a nonnegative supermartingale under the null) computed from the cumulative counts
alone, so Ville's inequality gives the guarantee without remembering earlier looks
(Ramdas, Grünwald, Vovk and Shafer, "Game-theoretic statistics and safe anytime-valid
inference", Statistical Science 2023).

The metrics are a list of definitions (`METRICS`); each gives its evidence function, whether
promotion needs it, whether it detects harm (rollback) or a change, and its reasons and
table row. Canary against baseline:

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
- predicted-score distribution (change; warning or critical per `score_shift`): is
  the arm a score came from independent of its bin? A Bayes factor with a Beta mixture per bin
  against the best-fitting common split (universal inference: Wasserman, Ramdas and
  Balakrishnan, PNAS 2020; valid, conservative).

Rollback needs evidence of harm on a critical metric, Holm-corrected across them. Promotion
needs evidence of non-inferiority on every required metric, each at alpha (a decision needing
all of them holds its level without correction), and no evidence of harm. Before both arms
have `min_requests` requests the judge holds, whatever the data say: never a rollback on too
little data, and no traffic is a hold with a warning, never a promotion. A hold says what it
needs: the canary requests after which the pending tests would pass if the estimates stay as
they are, and at the current rate about how long. A canary still inconclusive
`max_duration` after it started is rolled back (or promoted, `on_inconclusive: promote`, when
both arms have `min_requests` and nothing shows harm).

Where the guarantee is approximate: the traffic split is the realized share of requests (it
equals the routing weight up to noise, and stays right when routing departs from the weights);
the latency threshold t and slope k are re-read from the pooled histogram at each look
(label-free, so valid at any one look; they settle within a few thousand requests); the
non-inferiority test for errors is asymptotic (normal, with estimated variance). bench/judge
measures the result for three bucket layouts (the Prometheus client's defaults, Istio's, the
server's own).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)
from scipy import special

from modelctl.core.analysis.margins import error_margin
from modelctl.core.drift.statistics import adjust_pvalues
from modelctl.core.errors import UserError, collect
from modelctl.core.schema import Analysis, ModelName, Strict, VersionName, duration_seconds
from modelctl.core.state import pydantic_errors

JUDGE_VERSION = 2
Action = Literal["promote", "hold", "rollback"]
Severity = Literal["critical", "warning"]
Floats = npt.NDArray[np.float64]

# Alternatives the harm e-value mixes over: canary/baseline rate ratios and their prior weights.
# Doubling gets the most weight; 10x catches a broken canary within a few events.
HARM_RATIOS = np.array([1.25, 1.5, 2.0, 3.0, 5.0, 10.0])
HARM_WEIGHTS = np.array([0.1, 0.2, 0.3, 0.2, 0.1, 0.1])
# Alternatives of the latency non-inferiority e-value, as fractions of the allowed ratio rho.
BETTER_RATIOS = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.35, 0.2])
BETTER_WEIGHTS = np.full(BETTER_RATIOS.size, 1 / BETTER_RATIOS.size)
# Scale of the normal mixture for the error-rate difference when the margin is zero.
MIN_ERROR_SCALE = 0.001
LATENCY_QUANTILE = 0.99
BOUND_TOLERANCE = 1e-3
# Beta prior strength per score bin (in pseudo-requests), centred on the configured split.
SCORE_PRIOR_STRENGTH = 2.0
# Growth factors of the data at which a hold's projection re-runs the pending tests.
PROJECTION = (1.1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 64, 80, 100)


# ---------------------------------------------------------------- the snapshot


# A bucket bound: a number, the last one "+Inf" as Prometheus writes it.
Bound = Annotated[float, WithJsonSchema({"anyOf": [{"type": "number"}, {"const": "+Inf"}]})]


class Histogram(Strict):
    """A Prometheus histogram: cumulative counts per upper bound `le`, the last bound +Inf."""

    le: list[Bound] = Field(min_length=1)
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

    @field_serializer("le")
    def _json_bounds(self, le: list[float]) -> list[float | str]:
        # JSON has no infinity: the last bound is written as Prometheus writes it.
        return [b if math.isfinite(b) else "+Inf" for b in le]

    def cumulative(self) -> Floats:
        return np.maximum.accumulate(np.asarray(self.counts, dtype=np.float64))


class Feedback(Strict):
    """Ground-truth labels received for one arm's predictions: count per (actual, predicted)."""

    actual: Annotated[str, Field(min_length=1)]
    predicted: Annotated[str, Field(min_length=1)]
    count: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Arm(Strict):
    """One version's cumulative counts since the canary step began."""

    version: VersionName
    weight: Annotated[float, Field(ge=0, le=100)]
    requests: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    errors: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    latency_seconds: Histogram
    score: Histogram | None = None
    feedback: list[Feedback] = Field(default_factory=list)

    @model_validator(mode="after")
    def _errors_are_requests(self) -> Arm:
        if self.errors > self.requests:
            raise ValueError(
                f"errors ({self.errors:g}) exceed requests ({self.requests:g}); check the counters"
            )
        return self

    def labels(self) -> tuple[float, float]:
        """(labelled predictions, wrong ones) from the feedback counts."""
        labelled = sum(f.count for f in self.feedback)
        return labelled, sum(f.count for f in self.feedback if f.actual != f.predicted)


class Source(Strict):
    """Where the counts came from: the Prometheus queried and the PromQL run, by name."""

    prometheus: str
    queries: dict[str, str]


class Snapshot(Strict):
    """The judge's whole input: both arms' counts over one window, and the analysis settings.

    `window_start` is when the counts begin (the current step's commit); `canary_started` when
    the canary first took traffic (for `max_duration`). The JSON Schema of this format is
    `analysis/snapshot.schema.json`.
    """

    model: ModelName
    stack: Annotated[str, Field(min_length=1)]
    taken_at: datetime
    window_start: datetime | None = None
    canary_started: datetime | None = None
    baseline: Arm
    canary: Arm
    analysis: Analysis
    source: Source | None = None

    @field_validator("taken_at", "window_start", "canary_started")
    @classmethod
    def _aware(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{info.field_name} has no time zone; write it in UTC like 2026-01-31T12:00:00Z")
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

    def window_seconds(self) -> float | None:
        if self.window_start is None:
            return None
        return (self.taken_at - self.window_start).total_seconds()


def snapshot_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the snapshot, as committed in analysis/snapshot.schema.json."""
    schema = Snapshot.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


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
class Decision:
    """The action, one line of reason per metric that decided it, warnings, and the evidence.

    `needs` (on a hold) gives `canary_requests`: how many more canary requests until the pending
    tests are expected to pass, and `seconds`: about how long at the current canary rate; each
    None where the current estimates would never pass (or the rate is unknown).
    """

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
    needs: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _finite(asdict(self))
        return result


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
    """

    name: str
    evidence: Callable[[Snapshot], Evidence]
    required: Callable[[Analysis], bool]
    effect: Literal["harm", "change"]
    severity: Callable[[Analysis], Severity]
    harm_reason: Callable[[Evidence], str]
    ok_reason: Callable[[Evidence], str]
    row: Callable[[Evidence, dict[str, float], float], str]


def judge(snapshot: dict[str, Any] | Snapshot, source: str = "snapshot") -> Decision:
    """Decide promote, hold or rollback from one snapshot (see the module docstring).

    Parameters
    ----------
    snapshot : dict or Snapshot
        The metrics of the baseline and canary arms, their analysis settings and the time taken
        (the JSON form `modelctl judge --snapshot` reads; schema in analysis/snapshot.schema.json).
    source : str
        What to name in errors (a file path).

    Returns
    -------
    Decision
        The action ("promote", "hold" or "rollback"), its reasons, warnings, what a hold needs,
        and the evidence per metric with raw and Holm-adjusted always-valid p-values.

    Raises
    ------
    UserError, UserErrors
        The snapshot is invalid, one line per problem.
    """
    snap = snapshot if isinstance(snapshot, Snapshot) else parse_snapshot(snapshot, source)
    settings = snap.analysis
    evidence = _assess(snap)
    action, reasons, needs = _decide(snap, evidence)
    warnings = [
        f"{e.metric}: the distribution differs from the baseline's (always-valid p = {e.p_value:.3g})"
        for e in evidence
        if e.severity == "warning" and e.p_value is not None and e.p_value <= settings.alpha
    ]
    if snap.canary.requests == 0:
        warnings.append(_no_traffic_warning(snap))
    action, reasons, warnings = _past_max_duration(snap, action, reasons, warnings)
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
        needs=needs if action == "hold" else None,
    )


def definition(metric: str) -> MetricDefinition:
    """The definition of a metric by name.

    Raises
    ------
    KeyError
        No metric has that name.
    """
    return _BY_NAME[metric]


def _assess(snap: Snapshot) -> list[Evidence]:
    return _correct([d.evidence(snap) for d in METRICS], snap.analysis.alpha)


def _correct(evidence: list[Evidence], alpha: float) -> list[Evidence]:
    """Holm across the critical tests: rollback when any adjusted p-value is <= alpha."""
    family = [i for i, e in enumerate(evidence) if e.severity == "critical" and e.p_value is not None]
    adjusted = adjust_pvalues([evidence[i].p_value or 0.0 for i in family], "holm")
    corrected = list(evidence)
    for i, p_adj in zip(family, map(float, adjusted), strict=True):
        outcome = evidence[i].outcome
        if p_adj <= alpha:
            outcome = "changed" if definition(evidence[i].metric).effect == "change" else "harm"
        corrected[i] = replace(evidence[i], p_adjusted=p_adj, outcome=outcome)
    return corrected


def snapshot_digest(snapshot: Snapshot) -> str:
    """sha256 of the snapshot's canonical JSON (sorted keys), to match decisions with snapshots."""
    canonical = orjson.dumps(snapshot.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _decide(
    snap: Snapshot, evidence: list[Evidence]
) -> tuple[Action, list[str], dict[str, float | None] | None]:
    minimum = snap.analysis.min_requests
    short = [
        # A snapshot written by hand may hold fractional counts: shown as whole requests, rounded
        # down so that a short arm never reads as having the minimum.
        f"{name} has {math.floor(arm.requests):,} of the {minimum:,} requests needed to judge"
        for name, arm in (("canary", snap.canary), ("baseline", snap.baseline))
        if arm.requests < minimum
    ]
    if short:
        needs = _needs_for_minimum(snap)
        return "hold", ["not enough data: " + "; ".join(short) + _needs_text(needs)], needs
    harmful = [e for e in evidence if e.outcome in ("harm", "changed") and e.severity == "critical"]
    if harmful:
        return "rollback", [definition(e.metric).harm_reason(e) for e in harmful], None
    required = [e for e in evidence if definition(e.metric).required(snap.analysis)]
    pending = [e for e in required if e.outcome != "non-inferior"]
    if not pending:
        return "promote", [definition(e.metric).ok_reason(e) for e in required], None
    needs = _needs_for_tests(snap, [e.metric for e in pending])
    reasons = [_pending_reason(e, snap.analysis) for e in pending]
    reasons[-1] += _needs_text(needs)
    return "hold", reasons, needs


def _pending_reason(e: Evidence, settings: Analysis) -> str:
    if e.outcome == "no data":
        return f"{e.metric}: no data yet"
    return (
        f"{e.metric}: not yet shown within the {e.margin} margin "
        f"(non-inferiority p = {_p(e.p_noninferior)}, needs <= {settings.alpha:g})"
    )


def _no_traffic_warning(snap: Snapshot) -> str:
    since = f" since {snap.window_start.isoformat()}" if snap.window_start else ""
    return (
        f"no traffic: canary {snap.canary.version} received no requests{since}; "
        "check its route and pods (never promoted without data)"
    )


def _past_max_duration(
    snap: Snapshot, action: Action, reasons: list[str], warnings: list[str]
) -> tuple[Action, list[str], list[str]]:
    settings = snap.analysis
    if action != "hold" or settings.max_duration is None or snap.canary_started is None:
        return action, reasons, warnings
    elapsed = (snap.taken_at - snap.canary_started).total_seconds()
    if elapsed < duration_seconds(settings.max_duration):
        return action, reasons, warnings
    why = f"inconclusive after {duration_text(elapsed)} (max_duration {settings.max_duration}): {reasons[0]}"
    enough = min(snap.canary.requests, snap.baseline.requests) >= settings.min_requests
    if settings.on_inconclusive == "promote" and not enough:
        return action, reasons, [*warnings, f"{why}; not promoted without {settings.min_requests} requests"]
    return settings.on_inconclusive, [why], warnings


# ---------------------------------------------------------------- what a hold needs


def _needs_for_minimum(snap: Snapshot) -> dict[str, float | None]:
    minimum = snap.analysis.min_requests
    factors = [minimum / arm.requests for arm in (snap.canary, snap.baseline) if arm.requests > 0]
    if snap.canary.requests == 0 or snap.baseline.requests == 0:
        # An arm without requests gives no growth factor: the canary needs at least the minimum.
        more = (
            minimum
            if snap.canary.requests == 0
            else max(factors) * snap.canary.requests - snap.canary.requests
        )
    else:
        more = max(max(factors) - 1, 0.0) * snap.canary.requests
    return _with_time(snap, more)


def _needs_for_tests(snap: Snapshot, metrics: list[str]) -> dict[str, float | None]:
    """The smallest growth factor of all counts (from `PROJECTION`) at which every pending test
    would pass with the proportions as they are; bisection, the tests passing more as data grow."""

    def passes(factor: float) -> bool:
        grown = _scaled(snap, factor)
        return all(definition(m).evidence(grown).outcome == "non-inferior" for m in metrics)

    low, high = 0, len(PROJECTION) - 1
    if not passes(PROJECTION[high]):
        return _with_time(snap, None)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if passes(PROJECTION[middle]) else (middle + 1, high)
    return _with_time(snap, (PROJECTION[low] - 1) * snap.canary.requests)


def _with_time(snap: Snapshot, more: float | None) -> dict[str, float | None]:
    seconds = snap.window_seconds()
    rate = snap.canary.requests / seconds if seconds and snap.canary.requests else None
    eta = more / rate if more is not None and rate else None
    return {"canary_requests": None if more is None else math.ceil(round(more, 6)), "seconds": eta}


def _needs_text(needs: dict[str, float | None]) -> str:
    more, seconds = needs["canary_requests"], needs["seconds"]
    if more is None:
        return "; more requests alone would not pass it at the current estimates (early estimates often move: look again)"
    when = f", about {duration_text(seconds)} at the current rate" if seconds is not None else ""
    return f"; needs about {more:,.0f} more canary requests{when}"


def _scaled(snap: Snapshot, factor: float) -> Snapshot:
    def arm(a: Arm) -> Arm:
        return a.model_copy(
            update={
                "requests": a.requests * factor,
                "errors": a.errors * factor,
                "latency_seconds": _scaled_histogram(a.latency_seconds, factor),
                "score": None if a.score is None else _scaled_histogram(a.score, factor),
                "feedback": [f.model_copy(update={"count": f.count * factor}) for f in a.feedback],
            }
        )

    return snap.model_copy(update={"canary": arm(snap.canary), "baseline": arm(snap.baseline)})


def _scaled_histogram(histogram: Histogram, factor: float) -> Histogram:
    return histogram.model_copy(update={"counts": [c * factor for c in histogram.counts]})


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
    p_ok = _p_from_log_e(log_ok)
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
        p_value=_p_from_log_e(log_harm),
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
        p_ok = _p_from_log_e(log_ok)
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
        p_value=_p_from_log_e(log_harm),
        p_adjusted=None,
        p_noninferior=p_ok,
        samples=samples,
        note=note,
        margin=f"{settings.latency_margin:.0%}",
    )


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
    MetricDefinition("errors", _errors, _always, "harm", _critical, _errors_harm, _errors_ok, _errors_row),
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
)
_BY_NAME = {d.name: d for d in METRICS}


def describe(e: Evidence, arm: Literal["canary", "baseline"]) -> str:
    """One arm's cell of the evidence table ("1.00% of 5,000", "p99 320ms of 5,000")."""
    values = e.canary if arm == "canary" else e.baseline
    n = e.samples.get(arm, 0.0)
    if e.outcome == "no data" or not values:
        return f"n={n:,.0f}"
    return definition(e.metric).row(e, values, n)


# ---------------------------------------------------------------- sequential tests


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


def duration_text(seconds: float) -> str:
    """A duration in the unit a person reads it in: "45s", "12 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
