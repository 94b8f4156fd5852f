"""The canary analysis's queries, and the judge's snapshot built from Prometheus' answers.

Pure: `queries` names the PromQL (from the contract's table) that one analysis runs;
`build_snapshot` turns the answers (instant vectors, as Prometheus' HTTP API returns them)
into a `modelctl.core.analysis.judge.Snapshot`. The reading itself is `modelctl.repo.prometheus`.

Every count is a counter's increase over the window since the current step's commit, summed
across replicas, and exact (`window_counts`): each series' last value in the window less its value
at the window's start, or, for a series reset within the window (a restarted process), the sum of
its increases sample by sample. A histogram's buckets are still made cumulative again here (the
running maximum), never trusted to be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelctl.core import contract, releases
from modelctl.core.analysis.judge import Snapshot, parse_snapshot
from modelctl.core.schema import Analysis, Release

# One instant-vector sample: its labels and its value.
Sample = tuple[Mapping[str, str], float]
# A series, by its labels (without the metric name some functions drop).
Series = frozenset[tuple[str, str]]
# The window's counts the snapshot needs, by the contract's query name.
WINDOW_QUERIES = (
    "requests_in_window",
    "server_errors_in_window",
    "latency_buckets_in_window",
    "score_buckets_in_window",
    "feedback_in_window",
)


@dataclass(frozen=True)
class Arms:
    """The two versions compared and their configured weights (percent)."""

    baseline: str
    canary: str
    baseline_weight: int
    canary_weight: int


def canary_arms(release: Release) -> Arms | None:
    """The baseline and canary of a release in a canary state, else None.

    A canary state: exactly two versions take traffic, without sticky sessions or `experiment`
    settings (an A/B experiment, for `ab analyze`), and the canary (the version other than the recorded `rollback_to`, else the one
    with less traffic, on a tie the newer) has at most half of it.
    """
    serving = release.serving()
    if len(serving) != 2 or release.sticky is not None or release.experiment is not None:
        return None
    # The version the release started from, as recorded; a canary of an older version at 50%
    # would otherwise be taken for the stable one.
    stable = release.rollback_to if release.rollback_to in serving else releases.stable_version(release)
    canary = next(v for v in serving if v != stable)
    weight = release.traffic[canary]
    return Arms(stable, canary, release.traffic[stable], weight) if weight <= 50 else None


def promql_range(seconds: float) -> str:
    """A PromQL range covering `seconds` (whole seconds, at least one)."""
    return f"{max(math.ceil(seconds), 1)}s"


def queries(model: str, seconds: float, names: Sequence[str] = WINDOW_QUERIES) -> dict[str, str]:
    """The PromQL of the window counts `names` (keys of `contract.WINDOW_COUNTS`) over every
    version of `model` and the last `seconds`: the parts `window_counts` reads, by part name."""
    span = promql_range(seconds)
    return {
        part: promql
        for name in names
        for part, promql in contract.window_queries(name, {"model": model}, span).items()
    }


def resets(answers: Mapping[str, Sequence[Sample]]) -> list[tuple[str, Series]]:
    """(window count, series) of each series reset within its window, in `answers` (the parts of
    `queries`): their counts need every sample (`sample_query`)."""
    found = []
    for name in contract.WINDOW_COUNTS:
        end, start, reset = (
            _by_series(answers.get(f"{name}/{part}", ())) for part in ("end", "start", "resets")
        )
        found += [
            (name, series)
            for series, last in end.items()
            if reset.get(series, 0.0) > 0 or last < start.get(series, 0.0)
        ]
    return found


def sample_query(name: str, series: Series, seconds: float) -> str:
    """The PromQL of the samples of `series` (of the window count `name`) over the last `seconds`."""
    return contract.series_samples(name, dict(series), promql_range(seconds))


def window_counts(
    answers: Mapping[str, Sequence[Sample]],
    samples: Mapping[tuple[str, Series], Sequence[float]] | None = None,
) -> dict[str, list[Sample]]:
    """Each window count in `answers` (the parts of `queries`, by part name), by count name:
    samples labelled by version and the count's own labels, summed across series (replicas).

    Per series: the last value in the window less the value at its start (0 for a series born in
    the window: counters start at 0). A series reset within the window (see `resets`) counts its
    increases sample by sample from `samples` (its values in the window, oldest first), a value
    below the one before it being a restart from 0, as PromQL's `increase()` counts them but
    without extrapolating to the window's edges; without its samples it counts its last value.
    Exact either way: counts of requests are whole numbers.
    """
    reset = set(resets(answers))
    counts: dict[str, list[Sample]] = {}
    for name, count in contract.WINDOW_COUNTS.items():
        if f"{name}/end" not in answers:
            continue
        end, start = (_by_series(answers.get(f"{name}/{part}", ())) for part in ("end", "start"))
        grouped: dict[tuple[str, ...], float] = {}
        group = ("version", *count.labels)
        for series, last in end.items():
            first = start.get(series, 0.0)
            if (name, series) in reset:
                value = _through_resets(first, (samples or {}).get((name, series), [last]))
            else:
                value = last - first
            labels = dict(series)
            if all(label in labels for label in group) and math.isfinite(value):
                key = tuple(labels[label] for label in group)
                grouped[key] = grouped.get(key, 0.0) + value
        counts[name] = [(dict(zip(group, key, strict=True)), value) for key, value in grouped.items()]
    return counts


def _through_resets(first: float, values: Sequence[float]) -> float:
    total, previous = 0.0, first
    for value in values:
        total += value - previous if value >= previous else value
        previous = value
    return total


def _by_series(samples: Sequence[Sample]) -> dict[Series, float]:
    """Values by series (their labels, without the metric name some functions drop)."""
    return {
        frozenset((k, v) for k, v in labels.items() if k != "__name__"): value for labels, value in samples
    }


def build_snapshot(
    *,
    model: str,
    stack: str,
    arms: Arms,
    analysis: Analysis,
    taken_at: datetime,
    window_start: datetime,
    canary_started: datetime | None,
    answers: Mapping[str, Sequence[Sample]],
    source: Mapping[str, Any],
) -> Snapshot:
    """The judge's snapshot from the answers to `queries` (name -> samples).

    Raises
    ------
    UserError, UserErrors
        The counts do not make a valid snapshot (one line per problem).
    """
    requests = _by_version(answers.get("requests_in_window", ()))
    errors = _by_version(answers.get("server_errors_in_window", ()))
    latency = _histograms(answers.get("latency_buckets_in_window", ()))
    scores = _histograms(answers.get("score_buckets_in_window", ()))

    def arm(version: str, weight: int) -> dict[str, Any]:
        total = requests.get(version, 0.0)
        return {
            "version": version,
            "weight": weight,
            "requests": total,
            "errors": min(errors.get(version, 0.0), total),
            "latency_seconds": _histogram(latency, version),
            "score": _histogram(scores, version) if scores else None,
            "feedback": _feedback(answers.get("feedback_in_window", ()), version),
        }

    data = {
        "model": model,
        "stack": stack,
        "taken_at": taken_at.isoformat(),
        "window_start": window_start.isoformat(),
        "canary_started": canary_started.isoformat() if canary_started else None,
        "baseline": arm(arms.baseline, arms.baseline_weight),
        "canary": arm(arms.canary, arms.canary_weight),
        "analysis": analysis.model_dump(mode="json"),
        "source": dict(source),
    }
    return parse_snapshot(data, f"analysis of {model} on {stack}")


def _by_version(samples: Sequence[Sample]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for labels, value in samples:
        if "version" in labels and math.isfinite(value):
            totals[labels["version"]] = totals.get(labels["version"], 0.0) + value
    return totals


def _histograms(samples: Sequence[Sample]) -> dict[str, dict[float, float]]:
    """version -> bucket bound -> count."""
    buckets: dict[str, dict[float, float]] = {}
    for labels, value in samples:
        if "version" in labels and "le" in labels and math.isfinite(value):
            per = buckets.setdefault(labels["version"], {})
            bound = float(labels["le"])
            per[bound] = per.get(bound, 0.0) + value
    return buckets


def _histogram(buckets: Mapping[str, Mapping[float, float]], version: str) -> dict[str, Any]:
    """Both arms on the same bounds (the union); counts made cumulative again."""
    bounds = sorted({b for per in buckets.values() for b in per} | {math.inf})
    counts, running = [], 0.0
    for bound in bounds:
        running = max(running, buckets.get(version, {}).get(bound, 0.0))
        counts.append(running)
    return {"le": [b if math.isfinite(b) else "+Inf" for b in bounds], "counts": counts}


def _feedback(samples: Sequence[Sample], version: str) -> list[dict[str, Any]]:
    actual, predicted = contract.FEEDBACK.labels
    return [
        {"actual": labels[actual], "predicted": labels[predicted], "count": value}
        for labels, value in samples
        if labels.get("version") == version
        and labels.get(actual)
        and labels.get(predicted)
        and math.isfinite(value)
        and value > 0
    ]
