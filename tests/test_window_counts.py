"""Counts over an analysis window: exact per series, summed across replicas, never extrapolated;
a series without a value at the window's start is new only when Prometheus never saw it before.
(tests/test_window_prometheus.py makes each condition happen with a real Prometheus.)"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from modelctl.core.analysis.window import (
    Sample,
    WindowRead,
    first_queries,
    history_queries,
    increase,
    late_starts,
    queries,
    resets,
    sampled,
    window_counts,
)

REQUESTS = "requests_in_window"


def series(pod: str, version: str = "v1", code: str = "200") -> dict[str, str]:
    return {"model": "m", "version": version, "code": code, "pod": pod}


def answers(
    end: Mapping[str, float],
    start: Mapping[str, float] | None = None,
    reset: Mapping[str, float] | None = None,
    earlier: Mapping[str, float] | None = None,
) -> dict[str, list[Sample]]:
    """The parts of the requests count, per pod of version v1 (`earlier` only when given, as
    read_counts asks for it only where a series has no value at the start)."""

    def part(values: Mapping[str, float] | None) -> list[Sample]:
        return [(series(pod), value) for pod, value in (values or {}).items()]

    parts = {
        f"{REQUESTS}/end": part(end),
        f"{REQUESTS}/start": part(start),
        f"{REQUESTS}/resets": part(reset),
    }
    return parts | ({f"{REQUESTS}/earlier": part(earlier)} if earlier is not None else {})


def test_a_count_is_the_last_value_less_the_value_at_the_start_summed_over_pods() -> None:
    counted = window_counts(answers(end={"a": 1300, "b": 700}, start={"a": 1000, "b": 100}))
    assert counted[REQUESTS] == [({"version": "v1"}, 900.0)]


def test_a_series_born_in_the_window_counts_from_zero() -> None:
    raw = answers(end={"a": 600, "new": 600}, start={"a": 0}, earlier={"a": 1})
    assert late_starts(raw) == []
    assert window_counts(raw)[REQUESTS] == [({"version": "v1"}, 1200.0)]


def test_a_series_seen_before_the_window_but_not_at_its_start_counts_from_its_first_sample() -> None:
    """A target down across the start for longer than the bound: its lifetime is never counted,
    only what it counted between its samples in the window."""
    raw = answers(end={"a": 1600, "down": 100_900}, start={"a": 1000}, earlier={"a": 1, "down": 1})
    [(name, late)] = late_starts(raw)
    assert (name, dict(late)["pod"]) == (REQUESTS, "down")
    assert sampled(raw) == [(REQUESTS, late)]
    samples = {(REQUESTS, late): [100_300.0, 100_600.0, 100_900.0]}
    assert window_counts(raw, samples)[REQUESTS] == [({"version": "v1"}, 600.0 + 600.0)]
    # Without its samples nothing of it is known to be in the window.
    assert window_counts(raw)[REQUESTS] == [({"version": "v1"}, 600.0)]
    assert WindowRead({}, [(name, late)]).notes("5m") == [
        'v1: no sample within 5m before the window\'s start from pod="down", though scraped before it '
        "(a target down, or Prometheus restarting, across the start): counted from the first sample in the window"
    ]


def test_a_late_series_reset_in_the_window_counts_each_increase_after_its_first_sample() -> None:
    raw = answers(end={"down": 40}, reset={"down": 1}, earlier={"down": 1})
    [key] = sampled(raw)
    assert window_counts(raw, {key: [900.0, 950.0, 10.0, 40.0]})[REQUESTS] == [({"version": "v1"}, 90.0)]


def test_whether_a_series_existed_is_asked_only_for_counts_with_a_series_unread_at_the_start() -> None:
    parts = queries("m", 90, [REQUESTS, "feedback_in_window"], bound="15s")
    assert set(first_queries(parts)) == {
        f"{n}/{p}" for n in (REQUESTS, "feedback_in_window") for p in ("end", "start", "resets")
    }
    assert parts[f"{REQUESTS}/start"] == 'last_over_time(model_requests_total{model="m"}[15s] offset 90s)'
    assert parts[f"{REQUESTS}/earlier"] == 'present_over_time(model_requests_total{model="m"}[1d] offset 90s)'
    assert history_queries(parts, answers(end={"a": 5}, start={"a": 1})) == {}
    assert history_queries(parts, answers(end={"a": 5, "b": 2}, start={"a": 1})) == {
        f"{REQUESTS}/earlier": parts[f"{REQUESTS}/earlier"]
    }


@given(
    st.lists(st.integers(0, 10_000), min_size=1, max_size=30),
    st.sets(st.integers(0, 29), max_size=3),
    st.integers(0, 1000),
)
def test_increase_counts_exactly_what_was_served_through_any_restarts(
    served: list[int], restarts: set[int], start: int
) -> None:
    """A counter worth `start` at the window's start that served `served[i]` requests before each
    sample, restarting from 0 just before the samples in `restarts`: its increase is exactly what
    it served. (A restart whose first value is not below the value before it cannot be seen in
    the samples, by Prometheus either: such draws are left out.)"""
    values, value = [], float(start)
    for i, n in enumerate(served):
        previous = value
        value = (0.0 if i in restarts else value) + n
        assume(i not in restarts or value < previous)
        values.append(value)
    assert increase(values, start) == sum(served)


def test_a_pod_gone_during_the_window_keeps_what_it_served() -> None:
    # last_over_time still has the replaced pod's last value; it had no sample at the end.
    counted = window_counts(answers(end={"old": 450, "new": 50}, start={"old": 400}))
    assert counted[REQUESTS] == [({"version": "v1"}, 100.0)]


@pytest.mark.parametrize(
    ("end", "reset"),
    [(80.0, 1.0), (80.0, 0.0)],
    ids=["reset within the window", "reset before its first sample in the window"],
)
def test_a_reset_series_counts_its_increases_sample_by_sample(end: float, reset: float) -> None:
    raw = answers(end={"a": end, "b": 700}, start={"a": 400, "b": 100}, reset={"a": reset})
    [(name, series)] = resets(raw)
    assert (name, dict(series)["pod"]) == (REQUESTS, "a")
    samples = {(name, series): [450.0, 30.0, end]} if reset else {(name, series): [30.0, end]}
    # a: 400 -> 450 (+50), restart, 30 (+30), 80 (+50); b: 600.
    expected = 130.0 + 600 if reset else 80.0 + 600
    assert window_counts(raw, samples)[REQUESTS] == [({"version": "v1"}, expected)]


def test_a_reset_series_without_its_samples_counts_its_last_value() -> None:
    raw = answers(end={"a": 80}, start={"a": 400}, reset={"a": 2})
    assert window_counts(raw)[REQUESTS] == [({"version": "v1"}, 80.0)]


def test_counts_are_grouped_by_version_and_the_counts_labels() -> None:
    parts = queries("m", 90, ["feedback_in_window"])
    assert set(parts) == {f"feedback_in_window/{p}" for p in ("end", "start", "resets", "earlier")}
    cell = {"model": "m", "version": "v2", "actual": "fraud", "predicted": "legit"}
    raw: dict[str, list[Sample]] = {name: [] for name in parts} | {
        "feedback_in_window/end": [({**cell, "pod": "a"}, 5.0), ({**cell, "pod": "b"}, 7.0)]
    }
    assert window_counts(raw) == {
        "feedback_in_window": [({"version": "v2", "actual": "fraud", "predicted": "legit"}, 12.0)]
    }


def test_only_the_counts_asked_for_are_answered() -> None:
    assert window_counts({}) == {}
