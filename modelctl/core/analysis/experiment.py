"""A/B experiments decided on ground truth: one snapshot in, one decision out.

`analyze(snapshot)` is a pure function, like the canary judge, so any decision can be
recomputed from the snapshot it was made on. The snapshot holds, per arm, the feedback
confusion counts (`model_feedback_total{actual, predicted}`), the business value sent with the
labels and the requests, cumulative since the split began, at several instants (`looks`, the
last at `taken_at`), and the canary judge's counts (errors, latency) at `taken_at` for the
guardrails.

Every metric is a ratio of means over labelled requests, R = sum(X) / sum(Y): accuracy
(X = correct, Y = 1), precision (X = true positive, Y = predicted positive), recall (X = true
positive, Y = actually positive), F1 (X = 2 TP, Y = 2 TP + FP + FN); `value` is the mean value
per labelled request. Its variance is the delta method's (sandwich) estimate
sum((X - R Y)^2) / sum(Y)^2, with R smoothed by one pseudo-success in two (as the judge's
intervals are) so that an arm with no mistakes yet never has zero variance. `value` has no
squares in the counters: its spread is the `value_sd` setting.

The difference treatment - control has a confidence sequence: the normal-mixture boundary
(`modelctl.core.analysis.sequential.normal_mixture_radius`: the mSPRT of Johari, Pekelis and Walsh,
"Always valid inference", 2017; Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Annals of Statistics 2021) with the prior
scale at the smallest effect worth detecting, and the variance estimated at each look (an
asymptotic confidence sequence: Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences", Annals of Statistics
2024). The chance that any look ever excludes the true difference is at most alpha (up to the
normal approximation), however often one looks. Decisions:

- a winner: the interval excludes zero, and the better arm is not worse on any guardrail
  (`errors`, `latency`: the judge's harm tests with the winner as the canary; a feedback
  metric: its interval shows the winner below the other arm);
- no meaningful difference: the interval lies within (-effect, +effect);
- continue: neither, with the labelled requests still needed (`required_labels`, the same
  calculation as `modelctl ab plan`), or while `min_duration` has not passed.

`required_labels` predicts the sample size of this procedure: the labelled requests N at which
the difference exceeds the boundary by the power's normal quantile (P(the interval excludes
zero at N) = power under the normal approximation). The sequential procedure can stop at any
earlier look, so this is an upper bound on the labels by which a share `power` of experiments
has concluded; bench/ab measures how close it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from statistics import NormalDist
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from modelctl.core.analysis.metrics import definition
from modelctl.core.analysis.sequential import normal_mixture_radius
from modelctl.core.analysis.snapshot import Arm, Feedback, Snapshot, Source, digest, finite
from modelctl.core.errors import UserError
from modelctl.core.releases import format_duration, split_roles
from modelctl.core.schema import (
    EXPERIMENT_METRICS,
    Experiment,
    ModelName,
    Release,
    Strict,
    VersionName,
    duration_seconds,
)
from modelctl.core.state import parse

EXPERIMENT_VERSION = 1
Outcome = Literal["winner", "equivalent", "continue"]
# Guardrails the canary judge tests from request metrics (the others come from the labels).
JUDGED_GUARDRAILS = ("errors", "latency")
DEFAULT_POWER = 0.8

# ---------------------------------------------------------------- the snapshot


class ArmCounts(Strict):
    """One arm's cumulative counts since the split began: requests, labels and their value."""

    requests: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    feedback: list[Feedback] = Field(default_factory=list)
    value_sum: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    value_count: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0

    def labelled(self) -> float:
        return sum(f.count for f in self.feedback)


class Look(Strict):
    """Both arms' counts at one instant, cumulative since the split began."""

    at: datetime
    control: ArmCounts
    treatment: ArmCounts


class ExperimentSnapshot(Strict):
    """`analyze`'s whole input; `modelctl ab analyze` stores it at analysis/<stack>/<model>/.

    `control` is the version the experiment started from (the release's `rollback_to`), the
    `treatment` the other; `looks` are ordered in time, the last at `taken_at`; `counts` is the
    canary judge's snapshot at `taken_at` (baseline = control, canary = treatment), read for the
    errors and latency guardrails.
    """

    kind: Literal["ab"] = "ab"
    model: ModelName
    stack: Annotated[str, Field(min_length=1)]
    taken_at: datetime
    started: datetime
    control: VersionName
    treatment: VersionName
    positive_class: Annotated[str, Field(min_length=1)]
    experiment: Experiment
    looks: list[Look] = Field(min_length=1)
    counts: Snapshot
    source: Source | None = None

    @field_validator("taken_at", "started")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("the time has no time zone; write it in UTC like 2026-01-31T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSnapshot:
        if self.control == self.treatment:
            raise ValueError(f"control and treatment are both {self.control}; compare two versions")
        if (self.counts.baseline.version, self.counts.canary.version) != (self.control, self.treatment):
            raise ValueError("counts must hold the control as baseline and the treatment as canary")
        if any(look.at.tzinfo is None for look in self.looks):
            raise ValueError("a look's time has no time zone; write it in UTC like 2026-01-31T12:00:00Z")
        if any(b.at < a.at for a, b in zip(self.looks, self.looks[1:], strict=False)):
            raise ValueError("looks are out of order; list them oldest first")
        return self


def parse_experiment_snapshot(data: Any, source: str = "snapshot") -> ExperimentSnapshot:
    """Validate an experiment snapshot; every problem is a one-line UserError naming `source`.

    Raises
    ------
    UserError, UserErrors
        One line per problem, naming the key.
    """
    if not isinstance(data, dict):
        raise UserError(source, "the snapshot is not a JSON object", "pass a snapshot 'ab analyze' wrote")
    snapshot: ExperimentSnapshot = parse(ExperimentSnapshot, data, source, data)
    return snapshot


# ---------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """A metric of one arm: its value, the variance of that value, and the labels behind it."""

    value: float
    variance: float
    labels: float


# (X, Y) of a metric's ratio sum(X) / sum(Y) for one labelled request of class `actual`.
def _ratio_terms(metric: str, actual: str, predicted: str, positive: str) -> tuple[float, float]:
    tp = actual == positive and predicted == positive
    fp = predicted == positive and actual != positive
    fn = actual == positive and predicted != positive
    if metric == "accuracy":
        return float(actual == predicted), 1.0
    if metric == "precision":
        return float(tp), float(predicted == positive)
    if metric == "recall":
        return float(tp), float(actual == positive)
    return 2.0 * tp, 2.0 * tp + fp + fn  # f1


def estimate(
    metric: str,
    cells: Mapping[tuple[str, str], float],
    positive: str,
    *,
    value: tuple[float, float] = (0.0, 0.0),
    value_sd: float | None = None,
) -> Estimate:
    """One arm's `metric` from its confusion counts (actual, predicted) -> labels.

    Parameters
    ----------
    metric
        One of `EXPERIMENT_METRICS`.
    cells
        The feedback counts by (actual class, predicted class).
    positive
        The positive class (precision, recall, F1).
    value, value_sd
        (sum, count) of the business value, and its spread per labelled request (for "value").

    Returns
    -------
    Estimate
        NaN value and infinite variance when no label counts towards the metric yet.
    """
    if metric == "value":
        total, count = value
        if count <= 0 or value_sd is None:
            return Estimate(math.nan, math.inf, count)
        return Estimate(total / count, value_sd**2 / count, count)
    terms = [(*_ratio_terms(metric, a, p, positive), n) for (a, p), n in cells.items() if n > 0]
    sum_x = math.fsum(x * n for x, _, n in terms)
    sum_y = math.fsum(y * n for _, y, n in terms)
    labels = math.fsum(n for _, y, n in terms if y > 0)
    if sum_y <= 0:
        return Estimate(math.nan, math.inf, labels)
    smoothed = (sum_x + 1) / (sum_y + 2)
    spread = math.fsum(n * (x - smoothed * y) ** 2 for x, y, n in terms)
    return Estimate(sum_x / sum_y, spread / sum_y**2, labels)


@dataclass(frozen=True)
class Interval:
    """treatment - control with its always-valid (1 - alpha) confidence sequence."""

    difference: float
    lower: float
    upper: float


def compare(control: Estimate, treatment: Estimate, effect: float, alpha: float) -> Interval:
    """The difference treatment - control and its confidence sequence (scale `effect`)."""
    variance = control.variance + treatment.variance
    difference = treatment.value - control.value
    if not math.isfinite(variance) or math.isnan(difference):
        return Interval(math.nan, -math.inf, math.inf)
    radius = normal_mixture_radius(variance, effect, alpha) if variance > 0 else 0.0
    return Interval(difference, difference - radius, difference + radius)


def verdict(interval: Interval, effect: float) -> Literal["treatment", "control", "equivalent"] | None:
    """Which arm the interval shows better, "equivalent" within +-effect, or None (continue)."""
    if interval.lower > 0:
        return "treatment"
    if interval.upper < 0:
        return "control"
    if -effect < interval.lower and interval.upper < effect:
        return "equivalent"
    return None


# ---------------------------------------------------------------- sample size


def required_labels(
    variance_control: float,
    variance_treatment: float,
    share_treatment: float,
    *,
    difference: float,
    effect: float,
    alpha: float,
    power: float = DEFAULT_POWER,
) -> int | None:
    """Labelled requests (both arms) at which this procedure declares a true `difference`.

    Parameters
    ----------
    variance_control, variance_treatment
        Variance of the metric per labelled request in each arm (p (1 - p) for accuracy).
    share_treatment
        The treatment's share of the labelled requests (0-1).
    difference
        The true difference to detect (its size counts, not its sign).
    effect, alpha
        The experiment's smallest effect (the mixture's scale) and alpha.
    power
        The share of experiments that should have concluded by then.

    Returns
    -------
    int or None
        The smallest N with |difference| - z_power sd(N) >= the boundary's radius at N; None for
        no difference (it is never declared).
    """
    size = abs(difference)
    if size == 0 or not 0 < share_treatment < 1:
        return None
    per_label = variance_control / (1 - share_treatment) + variance_treatment / share_treatment
    z = NormalDist().inv_cdf(power)

    def enough(n: float) -> bool:
        variance = per_label / n
        return size - z * math.sqrt(variance) >= normal_mixture_radius(variance, effect, alpha)

    low, high = 1.0, 2.0
    while not enough(high):
        low, high = high, high * 2
        if high > 1e15:
            return None
    while high - low > 1:
        middle = math.floor((low + high) / 2)
        low, high = (low, middle) if enough(middle) else (middle, high)
    return math.ceil(high)


def metric_variance(metric: str, baseline: float, value_sd: float | None = None) -> float:
    """Variance per labelled request of `metric` at the value `baseline` (for `ab plan`).

    Accuracy, precision and recall are proportions over their own denominators (all labels,
    predicted positives, actual positives); value has the spread `value_sd`.

    Raises
    ------
    UserError
        F1 (its variance needs the whole confusion matrix), a proportion outside (0, 1), or
        value without `value_sd`.
    """
    if metric == "value":
        if value_sd is None:
            raise UserError(
                "--sd", "the value metric needs its spread", "pass --sd, the value's standard deviation"
            )
        return value_sd**2
    if metric == "f1":
        raise UserError(
            "--metric",
            "f1's variance needs the whole confusion matrix",
            "plan on precision or recall instead",
        )
    if not 0 < baseline < 1:
        raise UserError("--baseline", f"{baseline:g} is not a proportion", "give a value between 0 and 1")
    return baseline * (1 - baseline)


@dataclass(frozen=True)
class Plan:
    """What an experiment needs: labelled requests (both arms, each arm) and, at a rate, time."""

    metric: str
    baseline: float
    effect: float
    alpha: float
    power: float
    share_treatment: float
    labels: int | None
    per_arm: dict[str, int]
    labels_per_second: float | None
    seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = finite(asdict(self))
        return result


def plan(
    metric: str,
    baseline: float,
    effect: float,
    *,
    share_treatment: float = 0.5,
    alpha: float = 0.05,
    power: float = DEFAULT_POWER,
    value_sd: float | None = None,
    labels_per_second: float | None = None,
) -> Plan:
    """The labelled requests to detect `effect` above `baseline`, and the time at a label rate.

    Raises
    ------
    UserError
        See `metric_variance`; an effect taking a proportion past 1.
    """
    if metric not in EXPERIMENT_METRICS:
        raise UserError(
            "--metric", f"{metric!r} is not an experiment metric", f"use one of {EXPERIMENT_METRICS}"
        )
    if effect <= 0:
        raise UserError("--effect", f"{effect:g} is not a positive difference", "give e.g. 0.02")
    control = metric_variance(metric, baseline, value_sd)
    improved = baseline + effect
    if metric != "value" and improved >= 1:
        raise UserError("--effect", f"{baseline:g} + {effect:g} is not a proportion", "give a smaller effect")
    treatment = control if metric == "value" else improved * (1 - improved)
    labels = required_labels(
        control, treatment, share_treatment, difference=effect, effect=effect, alpha=alpha, power=power
    )
    per_arm = (
        {
            "control": math.ceil(labels * (1 - share_treatment)),
            "treatment": math.ceil(labels * share_treatment),
        }
        if labels
        else {}
    )
    seconds = labels / labels_per_second if labels and labels_per_second else None
    return Plan(
        metric, baseline, effect, alpha, power, share_treatment, labels, per_arm, labels_per_second, seconds
    )


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class MetricResult:
    """One metric per arm and the difference treatment - control with its interval."""

    metric: str
    control: float
    treatment: float
    control_labels: float
    treatment_labels: float
    difference: float
    lower: float
    upper: float
    verdict: str | None


@dataclass(frozen=True)
class Guardrail:
    """Whether the candidate winner is worse than the other arm on one guardrail."""

    metric: str
    worse: bool
    detail: str


@dataclass(frozen=True)
class Point:
    """One look of a metric over time (for the report's plots)."""

    at: str
    labels: float
    control: float
    treatment: float
    difference: float
    lower: float
    upper: float


@dataclass(frozen=True)
class ExperimentDecision:
    """The outcome, its reasons and the evidence.

    `needs` (on continue): `labels`, the labelled requests still needed, and `seconds`, about how
    long at the current label rate (None where unknown). `requests` and `labelled` are each arm's
    counts since the split began, by version; `coverage` is labelled / requests per arm; `label_delay_seconds` how long labels take to arrive (from the last two looks: the
    requests the labels have not caught up with, at the current rate; None when unknown).
    """

    outcome: Outcome
    winner: str | None
    loser: str | None
    reasons: list[str]
    warnings: list[str]
    model: str
    stack: str
    control: str
    treatment: str
    taken_at: str
    alpha: float
    effect: float
    primary: MetricResult
    metrics: list[MetricResult]
    guardrails: list[Guardrail]
    requests: dict[str, float]
    labelled: dict[str, float]
    coverage: dict[str, float | None]
    label_delay_seconds: dict[str, float | None]
    series: dict[str, list[Point]]
    snapshot_sha256: str
    experiment_version: int = EXPERIMENT_VERSION
    needs: dict[str, float | None] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = finite(asdict(self))
        return result


def analyze(snapshot: dict[str, Any] | ExperimentSnapshot, source: str = "snapshot") -> ExperimentDecision:
    """Decide winner, equivalent or continue from one experiment snapshot (module docstring).

    Raises
    ------
    UserError, UserErrors
        The snapshot is invalid, one line per problem.
    """
    snap = (
        snapshot if isinstance(snapshot, ExperimentSnapshot) else parse_experiment_snapshot(snapshot, source)
    )
    settings = snap.experiment
    names = [snap.experiment.metric] + [g for g in settings.guardrails if g in EXPERIMENT_METRICS]
    measurable: list[str] = [
        m for m in dict.fromkeys([*names, "accuracy"]) if m != "value" or settings.value_sd
    ]
    metrics: dict[str, MetricResult] = {m: _result(snap, snap.looks[-1], m) for m in measurable}
    primary = metrics[settings.metric]
    outcome, winner, reasons, warnings, guardrails = _decide(snap, primary, metrics)
    elapsed = (snap.taken_at - snap.started).total_seconds()
    waiting = duration_seconds(settings.min_duration) - elapsed
    needs: dict[str, float | None] | None = None
    if outcome != "continue" and waiting > 0:
        reasons = [
            f"{_outcome_text(outcome, winner, primary)}, but the experiment has run "
            f"{format_duration(elapsed)} of its min_duration {settings.min_duration}; continue"
        ]
        outcome, winner, needs = "continue", None, {"labels": 0.0, "seconds": waiting}
    if outcome == "continue" and settings.max_duration and elapsed > duration_seconds(settings.max_duration):
        warnings.append(
            f"the experiment has run past its max_duration {settings.max_duration} without a decision; "
            "end it by hand ('modelctl promote' or 'modelctl rollback')"
        )
    loser = None if winner is None else (snap.control if winner == snap.treatment else snap.treatment)
    return ExperimentDecision(
        outcome=outcome,
        winner=winner,
        loser=loser,
        reasons=reasons,
        warnings=warnings,
        model=snap.model,
        stack=snap.stack,
        control=snap.control,
        treatment=snap.treatment,
        taken_at=snap.taken_at.isoformat(),
        alpha=settings.alpha,
        effect=settings.effect,
        primary=primary,
        metrics=list(metrics.values()),
        guardrails=guardrails,
        requests={
            snap.control: snap.looks[-1].control.requests,
            snap.treatment: snap.looks[-1].treatment.requests,
        },
        labelled={
            snap.control: snap.looks[-1].control.labelled(),
            snap.treatment: snap.looks[-1].treatment.labelled(),
        },
        coverage=_coverage(snap),
        label_delay_seconds=_label_delay(snap),
        series={m: [_point(snap, look, m) for look in snap.looks] for m in metrics},
        snapshot_sha256=digest(snap),
        needs=needs or (_needs(snap, primary) if outcome == "continue" else None),
        settings=settings.model_dump(),
    )


def cells(feedback: Iterable[Feedback]) -> dict[tuple[str, str], float]:
    """Feedback counts by (actual, predicted), repeated cells summed."""
    out: dict[tuple[str, str], float] = {}
    for f in feedback:
        out[f.actual, f.predicted] = out.get((f.actual, f.predicted), 0.0) + f.count
    return out


def _estimate(snap: ExperimentSnapshot, arm: ArmCounts, metric: str) -> Estimate:
    return estimate(
        metric,
        cells(arm.feedback),
        snap.positive_class,
        value=(arm.value_sum, arm.value_count),
        value_sd=snap.experiment.value_sd,
    )


def _result(snap: ExperimentSnapshot, look: Look, metric: str) -> MetricResult:
    settings = snap.experiment
    control, treatment = _estimate(snap, look.control, metric), _estimate(snap, look.treatment, metric)
    interval = compare(control, treatment, settings.effect, settings.alpha)
    return MetricResult(
        metric,
        control.value,
        treatment.value,
        control.labels,
        treatment.labels,
        interval.difference,
        interval.lower,
        interval.upper,
        verdict(interval, settings.effect),
    )


def _point(snap: ExperimentSnapshot, look: Look, metric: str) -> Point:
    r = _result(snap, look, metric)
    labels = r.control_labels + r.treatment_labels
    return Point(look.at.isoformat(), labels, r.control, r.treatment, r.difference, r.lower, r.upper)


def _decide(
    snap: ExperimentSnapshot, primary: MetricResult, metrics: Mapping[str, MetricResult]
) -> tuple[Outcome, str | None, list[str], list[str], list[Guardrail]]:
    effect = snap.experiment.effect
    if primary.verdict == "equivalent":
        return "equivalent", None, [_outcome_text("equivalent", None, primary)], [], []
    if primary.verdict is None:
        return "continue", None, [_continue_text(primary, effect)], [], []
    winner = snap.treatment if primary.verdict == "treatment" else snap.control
    guardrails = [_guardrail(snap, name, winner, metrics) for name in snap.experiment.guardrails]
    worse = [g for g in guardrails if g.worse]
    if worse:
        text = (
            f"{winner} is better on {primary.metric} but worse on {', '.join(g.metric for g in worse)}; "
            "continue, or decide the trade-off by hand"
        )
        return "continue", None, [text], [g.detail for g in worse], guardrails
    return "winner", winner, [_outcome_text("winner", winner, primary)], [], guardrails


def _guardrail(
    snap: ExperimentSnapshot, name: str, winner: str, metrics: Mapping[str, MetricResult]
) -> Guardrail:
    if name in JUDGED_GUARDRAILS:
        counts = snap.counts
        if winner == snap.control:
            # The judge's harm tests ask whether the canary is worse: make the winner the canary.
            counts = counts.model_copy(update={"canary": counts.baseline, "baseline": counts.canary})
        evidence = definition(name).evidence(counts)
        harmed = evidence.p_value is not None and evidence.p_value <= snap.experiment.alpha
        p = "n/a" if evidence.p_value is None else f"{evidence.p_value:.3g}"
        return Guardrail(
            name,
            harmed,
            f"{name}: {winner} {'worse' if harmed else 'not shown worse'} (always-valid p = {p})",
        )
    result = metrics[name]
    if not math.isfinite(result.difference):
        return Guardrail(name, False, f"{name}: no labels towards it yet in one arm or both")
    # The interval of winner - other arm: worse when all of it is below zero.
    sign = 1 if winner == snap.treatment else -1
    low, high = sorted((sign * result.lower, sign * result.upper))
    worse = high < 0
    return Guardrail(
        name,
        worse,
        f"{name}: {winner} {'worse' if worse else 'not shown worse'} "
        f"(difference {sign * result.difference:+.4g}, interval [{low:+.4g}, {high:+.4g}])",
    )


def _needs(snap: ExperimentSnapshot, primary: MetricResult) -> dict[str, float | None]:
    """Labelled requests still needed at the current per-label variances and difference."""
    last = snap.looks[-1]
    control, treatment = (
        _estimate(snap, last.control, primary.metric),
        _estimate(snap, last.treatment, primary.metric),
    )
    labels = control.labels + treatment.labels
    if not (labels > 0 and control.labels > 0 and treatment.labels > 0 and math.isfinite(primary.difference)):
        return {"labels": None, "seconds": None}
    size = max(abs(primary.difference), snap.experiment.effect)
    settings = snap.experiment
    total = required_labels(
        control.variance * control.labels,
        treatment.variance * treatment.labels,
        treatment.labels / labels,
        difference=size,
        effect=settings.effect,
        alpha=settings.alpha,
    )
    more = None if total is None else max(total - labels, 0)
    rate = labels / (snap.taken_at - snap.started).total_seconds() if snap.taken_at > snap.started else 0
    return {"labels": more, "seconds": more / rate if more is not None and rate > 0 else None}


def _coverage(snap: ExperimentSnapshot) -> dict[str, float | None]:
    last = snap.looks[-1]
    return {
        version: arm.labelled() / arm.requests if arm.requests else None
        for version, arm in ((snap.control, last.control), (snap.treatment, last.treatment))
    }


def _label_delay(snap: ExperimentSnapshot) -> dict[str, float | None]:
    if len(snap.looks) < 2:
        return {snap.control: None, snap.treatment: None}
    before, last = snap.looks[-2], snap.looks[-1]
    seconds = (last.at - before.at).total_seconds()

    def delay(old: ArmCounts, new: ArmCounts) -> float | None:
        requests, labels = new.requests - old.requests, new.labelled() - old.labelled()
        if seconds <= 0 or requests <= 0 or labels <= 0:
            return None
        coverage, rate = labels / requests, requests / seconds
        return max((new.requests - new.labelled() / coverage) / rate, 0.0)

    return {
        snap.control: delay(before.control, last.control),
        snap.treatment: delay(before.treatment, last.treatment),
    }


# ---------------------------------------------------------------- text


def _outcome_text(outcome: str, winner: str | None, r: MetricResult) -> str:
    values = f"{r.treatment:.4g} vs {r.control:.4g}, difference {r.difference:+.4g}, interval [{r.lower:+.4g}, {r.upper:+.4g}]"
    if outcome == "winner":
        return f"{winner} is better on {r.metric} ({values})"
    return f"no meaningful difference in {r.metric} ({values})"


def _continue_text(r: MetricResult, effect: float) -> str:
    if not math.isfinite(r.difference):
        return f"{r.metric}: no labels yet in one arm or both"
    return (
        f"{r.metric}: the interval [{r.lower:+.4g}, {r.upper:+.4g}] of treatment - control holds zero "
        f"and reaches past +-{effect:g}"
    )


def ab_arms(release: Release) -> tuple[str, str] | None:
    """(control, treatment) of a release running an A/B experiment, else None.

    An experiment: `experiment` settings and exactly two versions taking traffic. The control is
    the version the split started from (the recorded `rollback_to`), else the stable one.
    """
    return split_roles(release) if release.experiment is not None else None


def running(release: Release | None, control: str, treatment: str) -> bool:
    """Whether `release` runs the experiment of `control` against `treatment`: experiment
    settings, both versions taking traffic (the commits from which it did began it)."""
    return (
        release is not None
        and release.experiment is not None
        and all(release.traffic.get(version, 0) > 0 for version in (control, treatment))
    )


# The window counts of the business value sent with labels: its sum, and how many labels carried one.
VALUE_QUERIES = ("feedback_value_in_window", "feedback_values_in_window")


def look(
    at: datetime, counts: Snapshot, answers: Mapping[str, Sequence[tuple[Mapping[str, str], float]]]
) -> Look:
    """One look from the judge's counts and the window counts of VALUE_QUERIES (per version)."""

    def per_version(name: str) -> dict[str, float]:
        return {labels["version"]: value for labels, value in answers.get(name, ()) if "version" in labels}

    total, count = (per_version(name) for name in VALUE_QUERIES)

    def arm(counted: Arm) -> ArmCounts:
        version = counted.version
        return ArmCounts(
            requests=counted.requests,
            feedback=counted.feedback,
            value_sum=max(total.get(version, 0.0), 0.0),
            value_count=max(count.get(version, 0.0), 0.0),
        )

    return Look(at=at, control=arm(counts.baseline), treatment=arm(counts.canary))


def looks_at(times: Sequence[datetime], count: int) -> list[datetime]:
    """`count` instants evenly spaced over [times[0], times[-1]] (the report's looks), ends included."""
    start, end = times[0], times[-1]
    if count < 2 or end <= start:
        return [end]
    step = (end - start) / (count - 1)
    return [start + step * i for i in range(count)]
