"""The canary judge: one metrics snapshot in, one decision out (promote, hold or rollback).

`judge(snapshot)` is a pure function, so any decision can be recomputed from the snapshot it
was made on. The snapshot holds cumulative counts since the canary step began, and the
analysis job runs the judge again at every look (say every five minutes); every test is
therefore sequential, with always-valid p-values (`modelctl.core.analysis.sequential`): the
chance that *any* look ever rejects a true hypothesis is at most alpha, however often the judge
looks.

The metrics and their tests are `modelctl.core.analysis.metrics` (one definition each); the
snapshot's format is `modelctl.core.analysis.snapshot`.

Rollback needs evidence of harm on a critical metric, Holm-corrected across them. Promotion
needs evidence of non-inferiority on every required metric, each at alpha (a decision needing
all of them holds its level without correction), and no evidence of harm. Before both arms
have `min_requests` requests the judge never promotes, and no traffic is a hold with a warning.
It rolls back before then only on what callers got (format-2 snapshots counted at the mesh)
and only on the tests valid from the first request (`MetricDefinition.early`: errors, and a
canary the mesh never reaches): a dead canary fails every request it is sent, and waiting for
`min_requests` of them only fails more callers. A snapshot counted at the servers holds until
`min_requests`, as it always did, so a format-1 decision replays unchanged. A hold says what it
needs: the canary requests after which the pending tests would pass if the estimates stay as
they are, and at the current rate about how long. A canary still inconclusive
`max_duration` after it started is rolled back (or promoted, `on_inconclusive: promote`, when
both arms have `min_requests` and nothing shows harm). A step is never taken (nor the canary
promoted) before the current step has run for `analysis.interval`, as Flagger's analysis
interval paces its steps: the judge holds, saying how long is left; a rollback never waits.
(Format 1 snapshots, committed before the format said when the step began, are judged as they
were.)

Where the guarantee is approximate: the traffic split is the realized share of requests (it
equals the routing weight up to noise, and stays right when routing departs from the weights);
the latency threshold t and slope k are re-read from the pooled histogram at each look
(label-free, so valid at any one look; they settle within a few thousand requests); the
non-inferiority test for errors is asymptotic (normal, with estimated variance). bench/judge
measures the result for three bucket layouts (the Prometheus client's defaults, Istio's, the
server's own).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from modelctl.core.analysis.metrics import METRICS, Evidence, definition, pending_reason
from modelctl.core.analysis.snapshot import Arm, Histogram, Snapshot, digest, finite, parse_snapshot
from modelctl.core.drift.statistics import adjust_pvalues
from modelctl.core.schema import duration_seconds

JUDGE_VERSION = 3
Action = Literal["promote", "hold", "rollback"]
# Growth factors of the data at which a hold's projection re-runs the pending tests.
PROJECTION = (1.1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 64, 80, 100)


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
        result: dict[str, Any] = finite(asdict(self))
        return result


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
    warnings += snap.notes
    action, reasons, warnings = _past_max_duration(snap, action, reasons, warnings)
    action, reasons, needs = _within_interval(snap, action, reasons, needs)
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
        snapshot_sha256=digest(snap),
        settings=settings.model_dump(),
        needs=needs if action == "hold" else None,
    )


def _assess(snap: Snapshot) -> list[Evidence]:
    judged = [d for d in METRICS if snap.mesh is not None or not d.mesh_only]
    return _correct([d.evidence(snap) for d in judged], snap.analysis.alpha)


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
    harmful = [e for e in evidence if e.outcome in ("harm", "changed") and e.severity == "critical"]
    if short:
        harmful = [e for e in harmful if definition(e.metric).early] if snap.mesh is not None else []
    if short and not harmful:
        needs = _needs_for_minimum(snap)
        return "hold", ["not enough data: " + "; ".join(short) + _needs_text(needs)], needs
    if harmful:
        return "rollback", [definition(e.metric).harm_reason(e) for e in harmful], None
    required = [e for e in evidence if definition(e.metric).required(snap.analysis)]
    pending = [e for e in required if e.outcome != "non-inferior"]
    if not pending:
        return "promote", [definition(e.metric).ok_reason(e) for e in required], None
    needs = _needs_for_tests(snap, [e.metric for e in pending])
    reasons = [pending_reason(e, snap.analysis) for e in pending]
    reasons[-1] += _needs_text(needs)
    return "hold", reasons, needs


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


def _within_interval(
    snap: Snapshot, action: Action, reasons: list[str], needs: dict[str, float | None] | None
) -> tuple[Action, list[str], dict[str, float | None] | None]:
    """A step (or promotion) is never taken before the current step has run for
    analysis.interval (format 2 snapshots); a rollback never waits."""
    ran = snap.step_seconds()
    interval = duration_seconds(snap.analysis.interval)
    if action != "promote" or ran is None or ran >= interval:
        return action, reasons, needs
    left = interval - ran
    why = (
        f"interval: the step has run for {duration_text(max(ran, 0.0))} of its {snap.analysis.interval} "
        f"(analysis.interval); look again in {duration_text(left)}"
        if ran >= 0
        else f"interval: the step's commit is dated {duration_text(-ran)} after this snapshot was taken "
        f"(a clock ahead where it was committed); its {snap.analysis.interval} (analysis.interval) "
        f"counts from that date: look again in {duration_text(left)}"
    )
    return "hold", [why, *reasons], {"canary_requests": 0, "seconds": left}


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


# ---------------------------------------------------------------- text


def duration_text(seconds: float) -> str:
    """A duration in the unit a person reads it in: "45s", "12 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
