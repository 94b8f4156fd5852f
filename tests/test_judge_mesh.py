"""What callers got decides: format-2 snapshots count requests, errors and latency at the mesh;
a dead canary is rolled back at the first look that shows it, one the mesh never reaches is
reported unreachable, both with the sequential tests' guarantees kept; format-1 snapshots
(counted at the servers, as every snapshot committed before) replay unchanged."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from modelctl.core import contract
from modelctl.core.analysis.judge import judge
from modelctl.core.analysis.snapshot import (
    Arms,
    Mesh,
    build_snapshot,
    digest,
    parse_snapshot,
    snapshot_schema,
)
from modelctl.core.schema import Analysis
from tests.test_judge import arm, snapshot

FORMAT_1 = Path(__file__).parent / "data" / "snapshots-format1"
SOURCES = {
    "requests": "envoy",
    "errors": "envoy",
    "latency_seconds": "envoy",
    "score": "server",
    "feedback": "server",
    "server": "server",
}


def mesh_snapshot(canary: dict[str, Any], baseline: dict[str, Any], **analysis: Any) -> dict[str, Any]:
    return {"format": 2, "sources": SOURCES, **snapshot(canary, baseline, **analysis)}


# ---------------------------------------------------------------- format 1 replays unchanged


@pytest.mark.parametrize("name", ["promote", "all-failing-below-min-requests", "no-canary-requests"])
def test_format_1_snapshots_replay_to_the_decision_recorded_before_format_2(name: str) -> None:
    # decisions.json was written by the judge of main before format 2 existed (a67ff27).
    recorded = json.loads((FORMAT_1 / "decisions.json").read_text())[name]
    data = json.loads((FORMAT_1 / f"{name}.json").read_text())
    decision = judge(data)
    assert decision.action == recorded["action"]
    assert decision.reasons == recorded["reasons"]
    assert decision.warnings == recorded["warnings"]
    assert decision.snapshot_sha256 == recorded["snapshot_sha256"]
    assert [e.metric for e in decision.evidence] == ["errors", "latency", "accuracy", "score"]
    # Read and written again, a format-1 snapshot is the same JSON: no format-2 key appears.
    assert parse_snapshot(data).model_dump(mode="json") == parse_snapshot(data).model_dump(mode="json")
    assert set(parse_snapshot(data).model_dump(mode="json")) == set(data)


# ---------------------------------------------------------------- a dead canary


def test_a_canary_failing_every_request_at_the_mesh_is_rolled_back_before_min_requests() -> None:
    dead = mesh_snapshot(arm("v1.1.0", 10, 40, 40), arm("v1.0.0", 90, 360, 0))
    decision = judge(dead)
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith(
        "errors: the canary's error rate is higher than the baseline's (100.00%"
    )
    # The same counts from the servers (format 1) wait for min_requests, as they always did.
    assert judge({k: v for k, v in dead.items() if k not in ("format", "sources")}).action == "hold"


def test_a_few_errors_as_often_as_the_baselines_hold_before_min_requests() -> None:
    decision = judge(mesh_snapshot(arm("v1.1.0", 10, 40, 2), arm("v1.0.0", 90, 360, 18)))
    assert decision.action == "hold"
    assert decision.reasons[0].startswith("not enough data: canary has 40 of the 500")


def test_early_rollback_keeps_alpha_over_looks_from_the_first_request() -> None:
    # Identical arms erring 5% of the time, a look every 20 canary requests until min_requests:
    # the judge may roll back at any of them, and must do so in at most alpha of runs.
    rng = np.random.default_rng(21)
    runs, looks, batch, alpha = 200, 25, 20, 0.05
    rolled = 0
    for _ in range(runs):
        e_c = np.cumsum(rng.binomial(batch, 0.05, size=looks))
        e_b = np.cumsum(rng.binomial(9 * batch, 0.05, size=looks))
        for k in range(looks):
            n = batch * (k + 1)
            canary, baseline = arm("v1.1.0", 10, n, float(e_c[k])), arm("v1.0.0", 90, 9 * n, float(e_b[k]))
            snap = mesh_snapshot({**canary, "score": None}, {**baseline, "score": None})
            if judge(snap).action == "rollback":
                rolled += 1
                break
    assert rolled / runs <= alpha + 0.02


# ---------------------------------------------------------------- a canary the mesh never reaches


def unreached(baseline_requests: float, weight: float = 10) -> dict[str, Any]:
    canary = {**arm("v1.1.0", weight, 0, 0), "score": None}
    canary["server"] = {"requests": 0, "errors": 0, "latency_seconds": canary["latency_seconds"]}
    return mesh_snapshot(canary, {**arm("v1.0.0", 100 - weight, baseline_requests, 0), "score": None})


def test_a_canary_the_mesh_never_reaches_is_reported_unreachable_not_held() -> None:
    decision = judge(unreached(5000))
    assert decision.action == "rollback"
    assert decision.reasons == [
        "unreachable: the mesh sent the canary none of its 10% share of requests, and the baseline 5,000 "
        "(adjusted always-valid p = 1.63e-229); check that its pods are ready and its route is applied"
    ]


@pytest.mark.parametrize("weight", [5, 10, 50])
def test_unreachable_is_found_only_once_chance_would_rarely_route_no_request_to_the_canary(
    weight: int,
) -> None:
    # Correct routing sends none of the first N requests to the canary with probability
    # (1 - share)^N: the finding needs that to be at most alpha, at whichever look it comes.
    share, alpha = weight / 100, 0.05
    first = next(n for n in range(1, 10_000) if judge(unreached(n, weight)).action == "rollback")
    assert (1 - share) ** first <= alpha < (1 - share) ** (first - 1)
    assert judge(unreached(first - 1, weight)).action == "hold"


def test_servers_counting_requests_the_mesh_did_not_is_no_finding_but_a_note() -> None:
    snap = unreached(5000)
    snap["canary"]["server"]["requests"] = 300
    decision = judge(snap)
    assert decision.action == "hold"
    [reach] = [e for e in decision.evidence if e.metric == "reachability"]
    assert reach.outcome == "no data"
    assert "its servers counted 300: check monitoring.mesh (envoy)" in reach.note


# ---------------------------------------------------------------- the snapshot from the window counts


def test_the_snapshot_takes_callers_counts_from_the_mesh_and_keeps_the_servers_beside_them() -> None:
    envoy = contract.MESH_SOURCES["envoy"]
    namespace, model = "models-dev", "fraud-detection"

    def cluster(version: str) -> dict[str, str]:
        return {"version": envoy.version_value(namespace, model, version)}

    def server(version: str) -> dict[str, str]:
        return {"version": version}

    answers = {
        # The mesh: 60 canary requests, all failed (the server is dead); buckets in milliseconds.
        "envoy_requests_in_window": [(cluster("v1.1.0"), 60.0), (cluster("v1.0.0"), 540.0)],
        "envoy_errors_in_window": [(cluster("v1.1.0"), 60.0)],
        "envoy_latency_buckets_in_window": [
            ({**cluster("v1.0.0"), "le": "5"}, 500.0),
            ({**cluster("v1.0.0"), "le": "+Inf"}, 540.0),
        ],
        # The servers saw 12 canary requests before it died.
        "requests_in_window": [(server("v1.1.0"), 12.0), (server("v1.0.0"), 540.0)],
        "latency_buckets_in_window": [({**server("v1.0.0"), "le": "0.005"}, 540.0)],
    }
    taken = datetime(2026, 11, 24, 12, tzinfo=UTC)
    snap = build_snapshot(
        model=model,
        stack="dev",
        arms=Arms("v1.0.0", "v1.1.0", 90, 10),
        analysis=Analysis(),
        taken_at=taken,
        window_start=taken - timedelta(seconds=30),
        canary_started=None,
        answers=answers,
        source={"prometheus": "http://127.0.0.1:9090", "queries": {}},
        mesh=Mesh(envoy, namespace),
    )
    assert (snap.format, snap.mesh, snap.sources) == (2, "envoy", SOURCES)
    assert (snap.canary.requests, snap.canary.errors) == (60, 60)
    assert snap.canary.server is not None
    assert snap.canary.server.requests == 12
    assert snap.baseline.latency_seconds.le == [0.005, math.inf]
    assert snap.baseline.latency_seconds.counts == [500, 540]
    data = snap.model_dump(mode="json")
    jsonschema.validate(data, snapshot_schema())
    assert digest(parse_snapshot(json.loads(json.dumps(data)))) == digest(snap)
    assert judge(snap).action == "rollback"


def test_a_mesh_without_one_series_in_prometheus_is_said_and_the_servers_counts_judged() -> None:
    """Prometheus scrapes no Istio proxy (or monitoring.mesh names another mesh): judging on
    nothing would hold forever; the servers' counts are judged, and the decision says why."""
    server = [({"version": "v1.1.0"}, 2_000.0), ({"version": "v1.0.0"}, 18_000.0)]
    taken = datetime(2026, 11, 24, 12, tzinfo=UTC)
    snap = build_snapshot(
        model="fraud-detection",
        stack="staging",
        arms=Arms("v1.0.0", "v1.1.0", 90, 10),
        analysis=Analysis(),
        taken_at=taken,
        window_start=taken - timedelta(minutes=10),
        canary_started=None,
        answers={"requests_in_window": server, "server_errors_in_window": [({"version": "v1.1.0"}, 80.0)]},
        source={"prometheus": "http://127.0.0.1:9090", "queries": {}},
        mesh=Mesh(contract.MESH_SOURCES["istio"], "models-test"),
    )
    assert (snap.format, snap.sources, snap.canary.server) == (2, None, None)
    assert (snap.canary.requests, snap.canary.errors) == (2_000, 80)
    decision = judge(snap)
    assert decision.action == "rollback"
    assert any(
        w.startswith("the mesh (istio) has no request series of fraud-detection") for w in decision.warnings
    )


def test_sources_are_named_by_format_2_only() -> None:
    snap = mesh_snapshot(arm("v1.1.0", 10, 40, 2), arm("v1.0.0", 90, 360, 18))
    with pytest.raises(Exception, match="sources are named by format 2 snapshots only"):
        judge({**snap, "format": 1})


def test_a_format_2_snapshot_counted_at_the_servers_holds_until_min_requests() -> None:
    """Without `sources` the counts are the servers': a canary failing every request they saw
    is not rolled back early (a request the servers never saw is not in them)."""
    snap = mesh_snapshot(arm("v1.1.0", 10, 40, 40), arm("v1.0.0", 90, 360, 0))
    assert judge(snap).action == "rollback"
    del snap["sources"]
    decision = judge(snap)
    assert decision.action == "hold"
    assert "reachability" not in {e.metric for e in decision.evidence}
