"""Counts over an analysis window: exact per series, summed across replicas, never extrapolated."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from modelctl.core.analysis.window import Sample, queries, resets, window_counts

REQUESTS = "requests_in_window"


def series(pod: str, version: str = "v1", code: str = "200") -> dict[str, str]:
    return {"model": "m", "version": version, "code": code, "pod": pod}


def answers(
    end: Mapping[str, float],
    start: Mapping[str, float] | None = None,
    reset: Mapping[str, float] | None = None,
) -> dict[str, list[Sample]]:
    """The parts of the requests count, per pod of version v1 (the start part keeps the metric name,
    as an instant selector does)."""

    def part(values: Mapping[str, float] | None, **extra: str) -> list[Sample]:
        return [({**series(pod), **extra}, value) for pod, value in (values or {}).items()]

    return {
        f"{REQUESTS}/end": part(end),
        f"{REQUESTS}/start": part(start, __name__="model_requests_total"),
        f"{REQUESTS}/resets": part(reset),
    }


def test_a_count_is_the_last_value_less_the_value_at_the_start_summed_over_pods() -> None:
    counted = window_counts(answers(end={"a": 1300, "b": 700}, start={"a": 1000, "b": 100}))
    assert counted[REQUESTS] == [({"version": "v1"}, 900.0)]


def test_a_series_born_in_the_window_counts_from_zero() -> None:
    counted = window_counts(answers(end={"a": 600, "new": 600}, start={"a": 0}))
    assert counted[REQUESTS] == [({"version": "v1"}, 1200.0)]


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
    assert set(parts) == {f"feedback_in_window/{p}" for p in ("end", "start", "resets")}
    cell = {"model": "m", "version": "v2", "actual": "fraud", "predicted": "legit"}
    raw: dict[str, list[Sample]] = {name: [] for name in parts} | {
        "feedback_in_window/end": [({**cell, "pod": "a"}, 5.0), ({**cell, "pod": "b"}, 7.0)]
    }
    assert window_counts(raw) == {
        "feedback_in_window": [({"version": "v2", "actual": "fraud", "predicted": "legit"}, 12.0)]
    }


def test_only_the_counts_asked_for_are_answered() -> None:
    assert window_counts({}) == {}
