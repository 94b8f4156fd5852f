"""The analysis window: the PromQL of its counts, and the exact counts from Prometheus' answers.

Pure: `queries` names the PromQL (from the contract's table) that one analysis runs;
`window_counts` turns the answers (instant vectors, as Prometheus' HTTP API returns them) into
counts per version, which every analysis reads (`snapshot.build_snapshot` for the canary judge
and the A/B experiments, `shadow.side` for the shadow report). The reading itself is
`modelctl.repo.prometheus`, driven by `modelctl.api`.

Every count is a counter's increase over the window since the current step's commit, summed
across replicas, and exact (`window_counts`): each series' last value in the window less its value
at the window's start, or, for a series reset within the window (a restarted process), the sum of
its increases sample by sample. A histogram's buckets are made cumulative again where they
are read (the running maximum), never trusted to be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from modelctl.core import contract

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


def promql_range(seconds: float) -> str:
    """A PromQL range covering `seconds` (whole seconds, at least one)."""
    return f"{max(math.ceil(seconds), 1)}s"


def queries(
    model: str, seconds: float, names: Sequence[str] = WINDOW_QUERIES, namespace: str = ""
) -> dict[str, str]:
    """The PromQL of the window counts `names` (keys of `contract.WINDOW_COUNTS`) over every
    version of `model` (in `namespace`, for the mesh's counts) and the last `seconds`: the parts
    `window_counts` reads, by part name."""
    span = promql_range(seconds)
    parts: dict[str, str] = {}
    for name in names:
        matchers, raw = contract.count_selection(name, namespace, model)
        parts.update(contract.window_queries(name, matchers, span, raw))
    return parts


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
    The `version` label holds the value of the count's own version label (a mesh's: see
    `contract.MeshSource.version_value`).

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
        group = (count.version, *count.labels)
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
        named = ("version", *count.labels)
        counts[name] = [(dict(zip(named, key, strict=True)), value) for key, value in grouped.items()]
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


def by_version(samples: Sequence[Sample]) -> dict[str, float]:
    """Values summed by their `version` label (samples without one, or not finite, left out)."""
    totals: dict[str, float] = {}
    for labels, value in samples:
        if "version" in labels and math.isfinite(value):
            totals[labels["version"]] = totals.get(labels["version"], 0.0) + value
    return totals


def histograms(samples: Sequence[Sample]) -> dict[str, dict[float, float]]:
    """Bucket counts by version, then by bound `le` (summed across series; not made cumulative)."""
    buckets: dict[str, dict[float, float]] = {}
    for labels, value in samples:
        if "version" in labels and "le" in labels and math.isfinite(value):
            per = buckets.setdefault(labels["version"], {})
            bound = float(labels["le"])
            per[bound] = per.get(bound, 0.0) + value
    return buckets
