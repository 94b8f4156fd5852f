"""Window counts read from a real Prometheus while the conditions of a cluster happen for real:
a failed scrape at the window's start, a target down across it for longer than the lookback
delta, Prometheus restarting, a pod born in the window, a restarted pod, several replicas; and
case 12 (a failed scrape of the baseline at a canary step) through `canary analyze`."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelctl import api
from modelctl.api.analysis import read_counts
from modelctl.core.analysis import window
from modelctl.core.analysis.window import WindowRead, by_version
from modelctl.repo.prometheus import lookback_delta
from tests.conftest import Cli
from tests.promstack import MODEL, Pod, PrometheusServer, pods
from tests.test_canary_analyze import STACK, analyze, canary_repo

__all__ = ["canary_repo", "pods"]  # the fixtures, used by name

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed (make tools)"
)


def running(tmp_path: Path, pods: list[Pod], *, lookback: str | None = None) -> PrometheusServer:
    prometheus = PrometheusServer(tmp_path, pods, lookback)
    return prometheus.start()


def read(prometheus: PrometheusServer, start: float) -> WindowRead:
    """The window counts of [start, now] as every analysis reads them."""
    at = time.time()
    seconds = at - start
    queries = window.queries(MODEL, seconds, bound=lookback_delta(prometheus.url))
    return read_counts(prometheus.url, queries, datetime.fromtimestamp(at, UTC), seconds)


def requests(counted: WindowRead, name: str = "requests_in_window") -> dict[str, float]:
    return by_version(counted.counts[name])


def test_a_failed_scrape_at_the_start_a_restarted_pod_and_a_new_one_count_exactly(
    tmp_path: Path, pods: list[Pod]
) -> None:
    gap, restarted, new = Pod("a", "v1"), Pod("b", "v1"), Pod("c", "v1")
    steady = Pod("d", "v2")
    pods += [gap.start(), restarted.start(), new, steady.start()]
    prometheus = running(tmp_path, pods)
    try:
        gap.serve(100_000, 5_000, observe=False)  # its lifetime, an old incident included
        restarted.serve(5_000, observe=False)
        steady.serve(20_000, observe=False)
        prometheus.scraped(125_000)
        prometheus.down(gap)  # a failed scrape: Prometheus marks its series stale
        start = time.time()
        # What an instant selector reads at the start: nothing for the gap's series.
        assert prometheus.query('model_requests_total{pod="a"}', at=start) == []
        time.sleep(1.5)
        prometheus.up(gap)
        gap.serve(7_500, 8)
        restarted.serve(1_000)
        prometheus.wait('sum(model_requests_total{pod="b"})', lambda v: v == 6_000)
        restarted.restart_process()  # its counters from 0 again
        restarted.serve(400)
        new.serve(300)  # before its first scrape: counted from 0, where its counters started
        prometheus.up(new)
        new.serve(200)
        steady.serve(2_500, 100)
        prometheus.scraped(100_000 + 7_500 + 400 + 500 + 22_500)
        counted = read(prometheus, start)
    finally:
        prometheus.stop()
    assert requests(counted) == {"v1": 7_500 + 1_400 + 500, "v2": 2_500}
    assert requests(counted, "server_errors_in_window") == {"v1": 8, "v2": 100}
    latency = window.histograms(counted.counts["latency_buckets_in_window"])
    assert latency["v1"][float("inf")] == 9_400  # every request observed in the window, by the same rules
    assert counted.late == []


def test_a_target_down_across_the_start_longer_than_the_lookback_counts_from_its_first_sample(
    tmp_path: Path, pods: list[Pod]
) -> None:
    """Beyond the lookback delta its value at the start is unknown: never its lifetime, only what
    it counted between its samples in the window (the 500 served unscraped are not known to be
    before or after the start)."""
    down, steady = Pod("a", "v1"), Pod("d", "v2")
    pods += [down.start(), steady.start()]
    prometheus = running(tmp_path, pods, lookback="3s")
    try:
        down.serve(100_000, 5_000, observe=False)
        steady.serve(10_000, observe=False)
        prometheus.scraped(110_000)
        prometheus.down(down)
        time.sleep(4)
        start = time.time()
        down.serve(500)  # alive but not scraped
        time.sleep(2)
        prometheus.up(down)
        prometheus.scraped(110_500)
        down.serve(7_500, 8)
        steady.serve(2_500, 100)
        prometheus.scraped(120_500)
        counted = read(prometheus, start)
    finally:
        prometheus.stop()
    assert requests(counted) == {"v1": 7_500, "v2": 2_500}
    assert requests(counted, "server_errors_in_window") == {"v1": 8, "v2": 100}
    assert {dict(series)["pod"] for _, series in counted.late} == {"a"}
    [note] = counted.notes("3s")
    assert note.startswith("v1: no sample within 3s before the window's start from instance=\"127.0.0.1:")


@pytest.mark.parametrize(
    ("lookback", "outage", "expected"),
    [(None, 1.0, 7_500), ("3s", 4.0, 7_300)],
    ids=["down shorter than the lookback delta", "down longer than it"],
)
def test_a_prometheus_restart_across_the_start(
    tmp_path: Path, pods: list[Pod], lookback: str | None, outage: float, expected: int
) -> None:
    """Prometheus writes no staleness markers when it stops, and replays its TSDB when it starts:
    within the lookback delta the last sample before it stopped is the start's value (the 200
    served while it was down, after the start, are counted); beyond it every series counts from
    its first sample after the restart."""
    pod, other = Pod("a", "v1"), Pod("d", "v2")
    pods += [pod.start(), other.start()]
    prometheus = running(tmp_path, pods, lookback=lookback)
    try:
        pod.serve(50_000, observe=False)
        prometheus.scraped(50_000)
        prometheus.stop()
        time.sleep(outage)  # its last sample is this long before the start
        start = time.time()
        pod.serve(200, observe=False)
        time.sleep(1)
        prometheus.start()
        prometheus.scraped(50_200)
        pod.serve(7_300, 8)
        other.serve(900)
        prometheus.scraped(58_400)
        counted = read(prometheus, start)
    finally:
        prometheus.stop()
    assert requests(counted) == {"v1": expected, "v2": 900}
    assert bool(counted.late) == (lookback is not None)


def test_case_12_a_failed_scrape_of_the_baseline_at_a_step_is_not_its_lifetime(
    canary_repo: Path, tmp_path: Path, pods: list[Pod], cli: Cli
) -> None:
    """Case 12: the baseline's target fails its scrapes while the 25% step is committed; then the
    baseline serves 7,500 requests (0.1% errors) and the canary 2,500 (4%): rolled back on the
    window's counts, not stepped on the baseline's lifetime (107,500 counted, 5,000 old errors)."""
    baseline, canary = Pod("baseline", "v1.0.0"), Pod("canary", "v1.1.0")
    pods += [baseline.start(), canary.start()]
    prometheus = running(tmp_path, pods)
    try:
        api.canary(canary_repo, MODEL, "v1.1.0", stack=STACK)  # 10%
        baseline.serve(100_000, 5_000, seed=1, observe=False)
        canary.serve(2_000, 2, seed=2)
        prometheus.scraped(102_000)
        time.sleep(2.5)  # git dates have whole seconds: the step comes well after these requests
        prometheus.down(baseline)
        time.sleep(1.5)
        api.canary(canary_repo, MODEL, "v1.1.0", stack=STACK)  # 25%
        time.sleep(1.5)
        prometheus.up(baseline)
        baseline.serve(7_500, 8, seed=3)
        canary.serve(2_500, 100, seed=4)
        prometheus.scraped(112_000)
        code, [analysis] = analyze(cli, canary_repo, prometheus.url, "--dry-run")
    finally:
        prometheus.stop()
    assert (code, analysis["outcome"]) == (2, "rollback")
    errors = next(e for e in analysis["decision"]["evidence"] if e["metric"] == "errors")  # type: ignore[index]
    assert errors["samples"] == {"baseline": 7_500, "canary": 2_500}
    assert (errors["baseline"]["count"], errors["canary"]["count"]) == (8, 100)
