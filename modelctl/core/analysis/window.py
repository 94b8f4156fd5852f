"""The analysis window: the PromQL of its counts, and the exact counts from Prometheus' answers.

Pure: `queries` names the PromQL (from the contract's table) that one analysis runs;
`window_counts` turns the answers (instant vectors, as Prometheus' HTTP API returns them) into
counts per version, which every analysis reads (`snapshot.build_snapshot` for the canary judge
and the A/B experiments, `shadow.side` for the shadow report). The reading itself is
`modelctl.repo.prometheus`, driven by `modelctl.api.analysis.read_counts` in three rounds: the
`FIRST_PARTS`, then `history_queries` for the counts that need them, then the samples of the
series `sampled` names.

Every count is a counter's increase over the window since the current step's commit, summed
across replicas (`increase` per series, over its samples):

- its value at the window's start is its last real sample at or before the start, within the
  bound (Prometheus' lookback delta): a failed scrape or a Prometheus restart there hides the
  series from an instant query (staleness markers), never from this range read;
- a series with no sample within the bound but some in the `SERIES_HISTORY` before (a target down
  across the start for longer) is counted from its first sample in the window: only requests
  known to be in the window, never its lifetime (`late_starts` names them);
- a series with no sample before the window at all is new (a pod born in it): counted from 0,
  where counters start;
- a series reset within the window (a restarted process) adds its increases sample by sample.

A histogram's buckets are made cumulative again where they are read (the running maximum),
never trusted to be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
# The parts read for every count; `earlier` only where a series has no value at the start.
FIRST_PARTS = ("end", "start", "resets")


def promql_range(seconds: float) -> str:
    """A PromQL range covering `seconds` (whole seconds, at least one)."""
    return f"{max(math.ceil(seconds), 1)}s"


def queries(
    model: str,
    seconds: float,
    names: Sequence[str] = WINDOW_QUERIES,
    bound: str = contract.LOOKBACK_DELTA,
    namespace: str = "",
) -> dict[str, str]:
    """The PromQL of the window counts `names` (keys of `contract.WINDOW_COUNTS`) over every
    version of `model` (in `namespace`, for the mesh's counts) and the last `seconds`, reading
    the start's value at most `bound` (a Prometheus duration) before it: the parts
    `window_counts` reads, by part name (`<count>/<part>`, the parts of `contract.WINDOW_PARTS`)."""
    span = promql_range(seconds)
    parts: dict[str, str] = {}
    for name in names:
        matchers, raw = contract.count_selection(name, namespace, model)
        parts.update(contract.window_queries(name, matchers, span, raw, bound))
    return parts


def first_queries(parts: Mapping[str, str]) -> dict[str, str]:
    """Of `parts` (from `queries`), those read for every count: `FIRST_PARTS`."""
    return {key: promql for key, promql in parts.items() if key.rpartition("/")[2] in FIRST_PARTS}


def history_queries(parts: Mapping[str, str], answers: Mapping[str, Sequence[Sample]]) -> dict[str, str]:
    """Of `parts`, the `earlier` part of each count with a series that has no value at the
    window's start in `answers` (the first parts' answers): whether it existed before."""
    return {
        f"{name}/earlier": parts[f"{name}/earlier"]
        for name in contract.WINDOW_COUNTS
        if f"{name}/earlier" in parts and _unread(answers, name)
    }


def _unread(answers: Mapping[str, Sequence[Sample]], name: str) -> list[Series]:
    end, start = (_by_series(answers.get(f"{name}/{part}", ())) for part in ("end", "start"))
    return [series for series in end if series not in start]


def late_starts(answers: Mapping[str, Sequence[Sample]]) -> list[tuple[str, Series]]:
    """(window count, series) of each series that existed before the window (a sample in the
    `earlier` part) but has no value at its start within the bound: counted from its first
    sample in the window."""
    found = []
    for name in contract.WINDOW_COUNTS:
        earlier = _by_series(answers.get(f"{name}/earlier", ()))
        found += [(name, series) for series in _unread(answers, name) if series in earlier]
    return found


def resets(answers: Mapping[str, Sequence[Sample]]) -> list[tuple[str, Series]]:
    """(window count, series) of each series reset within its window, in `answers`."""
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


def sampled(answers: Mapping[str, Sequence[Sample]]) -> list[tuple[str, Series]]:
    """(window count, series) of each series whose count needs its samples in the window
    (`sample_query`): those reset within it, and those counted from their first sample."""
    return list(dict.fromkeys([*resets(answers), *late_starts(answers)]))


def sample_query(name: str, series: Series, seconds: float) -> str:
    """The PromQL of the samples of `series` (of the window count `name`) over the last `seconds`."""
    return contract.series_samples(name, dict(series), promql_range(seconds))


def increase(values: Sequence[float], start: float = 0.0) -> float:
    """What a counter counted from `start` (its value at the window's start) through `values`
    (its samples in the window, oldest first): every rise, and after a value below the one
    before it (a restart, counters start at 0) that value itself. PromQL's `increase()` counts
    resets the same way but extrapolates to the window's edges; this does not.
    """
    total, previous = 0.0, start
    for value in values:
        total += value - previous if value >= previous else value
        previous = value
    return total


def window_counts(
    answers: Mapping[str, Sequence[Sample]],
    samples: Mapping[tuple[str, Series], Sequence[float]] | None = None,
) -> dict[str, list[Sample]]:
    """Each window count in `answers` (the parts of `queries`, by part name), by count name:
    samples labelled by version and the count's own labels, summed across series (replicas).
    The `version` label holds the value of the count's own version label (a mesh's: see
    `contract.MeshSource.version_value`).

    Per series (see the module docstring): `increase` from its value at the start (0 for a
    series new in the window) to its last value in the window; through its `samples` (its
    values in the window, oldest first, for the series `sampled` names) where it was reset or is
    counted from its first sample. A series that needs samples and has none counts what is known
    to be in the window: its last value after a reset, nothing after a late start.
    """
    sampled_series = set(resets(answers))
    late = set(late_starts(answers))
    counts: dict[str, list[Sample]] = {}
    for name, count in contract.WINDOW_COUNTS.items():
        if f"{name}/end" not in answers:
            continue
        end, start = (_by_series(answers.get(f"{name}/{part}", ())) for part in ("end", "start"))
        grouped: dict[tuple[str, ...], float] = {}
        group = (count.version, *count.labels)
        for series, last in end.items():
            values = list((samples or {}).get((name, series), ()))
            if (name, series) in late:
                value = increase(values[1:], values[0]) if values else 0.0
            elif (name, series) in sampled_series:
                value = increase(values or [last], start.get(series, 0.0))
            else:
                value = last - start.get(series, 0.0)
            labels = dict(series)
            if all(label in labels for label in group) and math.isfinite(value):
                key = tuple(labels[label] for label in group)
                grouped[key] = grouped.get(key, 0.0) + value
        named = ("version", *count.labels)
        counts[name] = [(dict(zip(named, key, strict=True)), value) for key, value in grouped.items()]
    return counts


@dataclass(frozen=True)
class WindowRead:
    """One window as read: its counts (`window_counts`) and the series counted from their first
    sample in it (`late_starts`)."""

    counts: dict[str, list[Sample]]
    late: list[tuple[str, Series]] = field(default_factory=list)

    def notes(self, bound: str) -> list[str]:
        """One line per version with series counted from their first sample in the window,
        naming where they were scraped (`bound` is the start's bound, a Prometheus duration)."""
        where: dict[str, set[str]] = {}
        for name, series in self.late:
            labels = dict(series)
            own = {"model", "version", "code", *contract.WINDOW_COUNTS[name].labels}
            target = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k not in own)
            where.setdefault(labels.get("version", "?"), set()).add(target or "its series")
        return [
            f"{version}: no sample within {bound} before the window's start from {', '.join(sorted(targets))}, "
            "though scraped before it (a target down, or Prometheus restarting, across the start): "
            "counted from the first sample in the window"
            for version, targets in sorted(where.items())
        ]


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
