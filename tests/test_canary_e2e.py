"""Canary analysis end to end on the local stack: real model servers behind Envoy, a real
Prometheus scraping them, `modelctl traffic` running throughout, and `modelctl canary analyze`
committing every decision with its snapshot.

- A healthy canary in another format (fraud-detection v1.2.0, XGBoost's own model file, served
  by treelite) against the scikit-learn stable (v1.0.0, skops) on dev is taken through every
  step of its `analysis.steps` to promotion by analyze commits alone.
- A genuinely broken version (v1.4.0: a real model that loads and passes the server's warm-up,
  then fails on every real row; tests/faults.py builds it) is rolled back by an
  analyze commit on its errors. (A 600-tree ensemble was tried first: slower at the median, 50%
  of its requests over 1 ms against 18%, but not at p99, where this machine's scheduling stalls
  dominate both arms; the judge judges p99, so it rightly stepped it. Slower at p99 takes
  ~4,000 trees, over a minute of training.)
- Each analyze commit holds its snapshot, and `modelctl judge --replay` reproduces its decision.

Every wait is bounded; the traffic process and the stack are stopped by pid at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelctl.core import yamlio
from tests import pipeline_repo
from tests.factories import run_git, stack_doc
from tests.faults import add_broken_version
from tests.test_local_stack import modelctl, up

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local-stack")]

MODEL = pipeline_repo.MODEL
# scikit-learn (skops) stable, XGBoost canary (tests/pipeline_repo.py formats_template).
STABLE, HEALTHY, BROKEN = "v1.0.0", "v1.2.0", "v1.4.0"
# The analysis settings of the scratch dev stack, chosen so that each decision is reachable
# within seconds at the rate the local stack takes on a shared 2-core machine:
# - steps 20 then 50: every step is exercised, and at 20% the canary still gets ~40 req/s;
# - interval 5s: each step runs at least that long (the judge holds until it has);
# - min_requests 200 per arm: a decision never rests on a handful of requests;
# - error_margin 2 points: these models return no errors, and non-inferiority with zero errors
#   needs about 8 (1 - m) / m canary requests, so ~400 at 2 points (the default 0.5 point would
#   need ~1,600 per step, minutes of this traffic for no better test of the loop);
# - latency_margin 100% (p99 within 2x): the servers' own buckets around their few-millisecond
#   p99 are 50% apart (2, 3, 5, 7.5 ms), and under a full parallel test run on a shared machine
#   the p99 of two near-identical versions was not shown within 50% in two minutes at 50% weight
#   (p between 0.15 and 0.8), while within 2x it is shown in seconds; make demo uses the same.
ANALYSIS: dict[str, Any] = {
    "steps": [20, 50],
    "interval": "5s",
    "min_requests": 200,
    "error_margin": 0.02,
    "latency_margin": 1.0,
}
RATE = 250  # requests per second through the gateway
ONCALL = {
    "name": "oncall-email",
    "severities": ["critical"],
    "email": {"to": "oncall@example.com", "from": "alerts@example.com", "smarthost": "smtp.example.com:587"},
}
CRITICAL = ("ModelVersionFailingCallers", "ModelVersionUnavailable")
ALERT_SECONDS = 90
DECISION_SECONDS = 120  # the longest any one decision may take before the test fails
LOOK_EVERY = 3.0  # seconds between analyses while the judge holds


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = pipeline_repo.copy(
        pipeline_repo.formats_template(tmp_path_factory), tmp_path_factory.mktemp("e2e") / "repo"
    )
    add_broken_version(root, pipeline_repo.remote(root), version=BROKEN)
    dev = stack_doc({STABLE: 100}, namespace="models-dev")
    dev["config"]["modelctl:releases"][MODEL]["analysis"] = ANALYSIS
    dev["config"]["modelctl:releases"][MODEL]["replicas"] = {"min": 1}  # one pod per version is enough here
    dev["config"]["modelctl:environment"]["receivers"] = [ONCALL]
    yamlio.dump_file(root / "Pulumi.dev.yaml", dev)
    # staging is no canary: `canary analyze` without --stack skips it (it has no Prometheus).
    yamlio.dump_file(root / "Pulumi.staging.yaml", stack_doc({STABLE: 100}, namespace="models-staging"))
    run_git(root, "add", "-A")
    run_git(
        root, "commit", "-qm", f"dev and staging on v1.0.0, with test analysis settings; a broken {BROKEN}"
    )
    yield root
    modelctl(root, "down", "--stack", "dev")


@pytest.fixture(scope="module")
def traffic(repo: Path) -> Iterator[subprocess.Popen[str]]:
    """The stack up, and `modelctl traffic` sending held-out rows for the whole module."""
    up(repo, "dev")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "modelctl", "-C", str(repo), "traffic", "--stack", "dev"),
            *("--requests", "1000000", "--rate", str(RATE), "--users", "200", "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def analyze_until_decided(repo: Path, traffic: subprocess.Popen[str]) -> tuple[dict[str, Any], int]:
    """Run `canary analyze` (every stack, as the job does) until it decides; (result, holds)."""
    deadline = time.monotonic() + DECISION_SECONDS
    holds = 0
    while time.monotonic() < deadline:
        assert traffic.poll() is None, "modelctl traffic stopped"
        proc = modelctl(repo, "canary", "analyze", "--json", timeout=60)
        assert proc.returncode in (0, 2, 3), proc.stderr
        data = json.loads(proc.stdout)
        assert data["skipped"] == [{"stack": "staging", "reason": "no release in a canary state"}]
        [result] = data["analyses"]
        if result["outcome"] != "hold":
            return result, holds
        holds += 1
        print(f"  hold: {result['decision']['reasons'][-1]}")
        assert result["commit"] is None
        assert result["snapshot"] is None
        time.sleep(LOOK_EVERY)
    # The evidence of the last look, committed for inspection (the test fails either way).
    modelctl(repo, "canary", "analyze", "--record", timeout=60)
    raise AssertionError(f"no decision within {DECISION_SECONDS} s; last: {result['message']}")


def release(repo: Path) -> dict[str, Any]:
    doc = yamlio.load(repo / "Pulumi.dev.yaml")
    result: dict[str, Any] = doc["config"]["modelctl:releases"][MODEL]
    return result


def check_commit(repo: Path, result: dict[str, Any], outcome: str) -> str:
    """The analyze commit holds its snapshot and the stack edit, and replays to its decision."""
    commit = str(result["commit"])
    assert result["outcome"] == outcome
    files = run_git(repo, "show", "--name-only", "--format=", commit).split()
    assert sorted(files) == sorted([str(result["snapshot"]), "Pulumi.dev.yaml"])
    assert str(result["snapshot"]).startswith(f"analysis/dev/{MODEL}/")
    message = run_git(repo, "log", "-1", "--format=%B", commit)
    assert message.startswith(f"canary analyze {outcome}: ")
    assert f"Analysis-Snapshot: {result['snapshot']}" in message
    replayed = modelctl(repo, "judge", "--replay", commit, "--json")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    data = json.loads(replayed.stdout)
    assert data["matches"] is True
    assert data["decision"]["action"] == result["decision"]["action"]
    return commit


def servers(repo: Path, version: str) -> list[int]:
    rows = json.loads(modelctl(repo, "ps", "--stack", "dev", "--json").stdout)["processes"]
    return [int(r["pid"]) for r in rows if r["kind"] == "server" and r.get("version") == version]


def critical_email(mailbox: Path, version: str) -> str:
    deadline = time.monotonic() + ALERT_SECONDS
    while time.monotonic() < deadline:
        for path in sorted(mailbox.glob("*.eml")):
            text = path.read_text(errors="replace")
            if version in text and any(name in text for name in CRITICAL):
                return text
        time.sleep(1)
    raise AssertionError(f"no critical email naming {version} within {ALERT_SECONDS} s")


@pytest.mark.parametrize(("kind", "sig"), [("killed", signal.SIGKILL), ("hanging", signal.SIGSTOP)])
def test_a_canary_broken_under_traffic_is_rolled_back_on_what_callers_got(
    repo: Path, traffic: subprocess.Popen[str], kind: str, sig: signal.Signals
) -> None:
    canary = modelctl(repo, "canary", MODEL, HEALTHY, "--stack", "dev")
    assert canary.returncode == 0, canary.stderr
    mailbox = Path(up(repo, "dev")["mailbox"])
    time.sleep(3)  # it serves its share before it breaks
    pids = servers(repo, HEALTHY)
    assert pids
    for pid in pids:
        os.kill(pid, sig)
    broke = time.monotonic()
    if sig == signal.SIGSTOP:
        # A hang shows once the route's timeout (10 s) cuts the first requests: a look before it
        # sees only the canary's good answers (and may rightly step it).
        time.sleep(12)
    try:
        result, holds = analyze_until_decided(repo, traffic)
    finally:
        for pid in pids if sig == signal.SIGSTOP else []:
            os.kill(pid, signal.SIGCONT)
    check_commit(repo, result, "rollback")
    print(f"{kind}: rolled back {time.monotonic() - broke:.0f} s after the break, {holds} holds")
    reason = result["decision"]["reasons"][0]
    assert reason.startswith("errors: the canary's error rate is higher than the baseline's"), reason
    snapshot = json.loads((repo / str(result["snapshot"])).read_text())
    assert snapshot["format"] == 2
    assert snapshot["sources"]["requests"] == snapshot["sources"]["errors"] == "envoy"
    canary_arm = snapshot["canary"]
    # Callers' failures the servers never answered: the mesh counts them, the servers do not.
    assert canary_arm["errors"] > canary_arm["server"]["errors"]
    assert release(repo)["traffic"].get(HEALTHY, 0) == 0
    email = critical_email(mailbox, HEALTHY)
    assert "critical" in email
    cleared = modelctl(
        repo, "release-hold", "clear", MODEL, HEALTHY, "--stack", "dev", "--reason", f"test: {kind}"
    )
    assert cleared.returncode == 0, cleared.stderr
    up(repo, "dev")


def test_a_healthy_canary_is_promoted_through_every_step_by_analyze_commits(
    repo: Path, traffic: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    canary = modelctl(repo, "canary", MODEL, HEALTHY, "--stack", "dev")
    assert canary.returncode == 0, canary.stderr
    up(repo, "dev")
    decided = []
    for step, outcome in [(20, "step"), (50, "promote")]:
        assert release(repo)["traffic"][HEALTHY] == step
        result, holds = analyze_until_decided(repo, traffic)
        decided.append(check_commit(repo, result, outcome))
        snapshot = json.loads((repo / str(result["snapshot"])).read_text())
        print(
            f"{outcome} at {step}%: canary {snapshot['canary']['requests']:.0f} and baseline "
            f"{snapshot['baseline']['requests']:.0f} requests after {holds} holds; "
            f"{result['decision']['reasons']}"
        )
        assert snapshot["canary"]["errors"] == 0
        up(repo, "dev")
    assert release(repo)["traffic"] == {HEALTHY: 100, STABLE: 0}
    print(f"promoted through {len(decided)} analyze commits in {time.monotonic() - started:.0f} s")


def test_a_broken_version_is_rolled_back_by_an_analyze_commit(
    repo: Path, traffic: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    canary = modelctl(repo, "canary", MODEL, BROKEN, "--stack", "dev")
    assert canary.returncode == 0, canary.stderr
    mailbox = Path(up(repo, "dev")["mailbox"])
    result, holds = analyze_until_decided(repo, traffic)
    check_commit(repo, result, "rollback")
    reason = result["decision"]["reasons"][0]
    assert reason.startswith("errors: the canary's error rate is higher than the baseline's"), reason
    snapshot = json.loads((repo / str(result["snapshot"])).read_text())
    assert snapshot["sources"]["errors"] == "envoy"
    assert snapshot["canary"]["errors"] > 0
    assert "critical" in critical_email(mailbox, BROKEN)
    after = release(repo)
    assert after["traffic"].get(BROKEN, 0) == 0
    assert after["traffic"][HEALTHY] == 100
    assert BROKEN in after["held"]
    print(f"rolled back after {holds} holds in {time.monotonic() - started:.0f} s: {reason}")
    up(repo, "dev")
