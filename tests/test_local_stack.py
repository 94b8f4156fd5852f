"""`modelctl up` end to end: real model servers (pods under the supervisor), Envoy, Prometheus,
Alertmanager and mailbox.

Two stacks of one test repository run for the whole module (starting one takes ~15 s):
- staging: fraud-detection v1.0.0 70% / v1.1.0 30%, three replicas each, sticky sessions, header
  overrides;
- dev: v1.0.0 50% / v1.2.0 50% (a version whose model fails on every real row) and v1.1.0 as a
  25% shadow.
Test settings shorten scrape and evaluation intervals, every rule's `for`, and group_wait, by
`up`'s options. Every wait is bounded; the module's finalizer stops both stacks by pid.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scipy.stats import binom

from infra.alert_rules import DRIFT_P_VALUE
from modelctl.core import contract, yamlio
from modelctl.core.state import load_model
from onebox.traffic import json_rows, no_cookie_jar
from tests import pipeline_repo
from tests.factories import full_docs, run_git, stack_doc
from tests.faults import BROKEN, add_broken_version

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local-stack")]

MODEL = pipeline_repo.MODEL
SHADOW_PERCENT = 25
TEST_TIMING = [
    "--scrape-interval=1s",
    "--evaluation-interval=1s",
    "--alert-for=3s",
    "--group-wait=1s",
    "--group-interval=2s",
    "--server-arg=--drift-interval-s=1",
    "--server-arg=--drift-window=200",
]
CONFIDENCE = 0.999
# Email (critical alerts), Slack and a webhook, as in the factories' production stack.
RECEIVERS = full_docs()[1]["prod"]["config"]["modelctl:environment"]["receivers"]


def modelctl(root: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelctl", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def up(root: Path, stack: str) -> dict[str, Any]:
    proc = modelctl(root, "up", "--stack", stack, "--json", *TEST_TIMING)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def write_stack(root: Path, name: str, release: dict[str, Any]) -> None:
    doc = stack_doc({}, namespace=f"models-{name}", receivers=RECEIVERS)
    doc["config"]["modelctl:releases"][MODEL] = release
    yamlio.dump_file(root / f"Pulumi.{name}.yaml", doc)


WEIGHTS = {"v1.0.0": 70, "v1.1.0": 30}
OVERRIDES = {"canary": "v1.1.0", "stable": "v1.0.0"}
REPLICAS = 3
STAGING: dict[str, Any] = {
    "traffic": WEIGHTS,
    "replicas": {"min": REPLICAS},
    "sticky": {"cookie": "model-version"},
    "overrides": OVERRIDES,
}
DEV: dict[str, Any] = {
    "traffic": {"v1.0.0": 50, BROKEN: 50},
    "replicas": {"min": 1},
    "shadow": {"version": "v1.1.0", "percent": SHADOW_PERCENT},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = pipeline_repo.copy(
        pipeline_repo.template(tmp_path_factory), tmp_path_factory.mktemp("local") / "repo"
    )
    pipeline_repo.push_all(root)
    add_broken_version(root, pipeline_repo.remote(root))
    write_stack(root, "staging", STAGING)
    write_stack(root, "dev", DEV)
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", "local stacks: a split with sticky users, a broken version, a shadow")
    yield root
    for stack in ("staging", "dev"):
        modelctl(root, "down", "--stack", stack)


@pytest.fixture(scope="module")
def staging(repo: Path) -> dict[str, Any]:
    return {**up(repo, "staging"), "rows": held_out_rows(repo)}


@pytest.fixture(scope="module")
def dev(repo: Path) -> dict[str, Any]:
    return {**up(repo, "dev"), "rows": held_out_rows(repo)}


def held_out_rows(root: Path) -> Iterator[list[float | int | bool]]:
    """The held-out rows in turn, endlessly, as the signature's JSON types: the servers' drift
    windows see the data's distribution, not one row repeated."""
    features = load_model(root, MODEL).signature.features
    rows = json_rows(np.load(root / "data" / MODEL / "X_test.npy"), [f.type for f in features])
    return itertools.cycle(rows)


def predict(
    client: httpx.Client, stack: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    host = stack["models"][MODEL]["host"]
    return client.post(
        f"{stack['gateway']}/predict",
        json={"features": next(stack["rows"])},
        headers={"host": host, **(headers or {})},
    )


def within(count: int, total: int, percent: float) -> bool:
    """`count` of `total` inside the 99.9% binomial interval of a share of `percent`."""
    low, high = binom.interval(CONFIDENCE, total, percent / 100)
    return bool(low <= count <= high)


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def query(stack: dict[str, Any], promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack['prometheus']}/api/v1/query", params={"query": promql}, timeout=10)
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def firing(stack: dict[str, Any], alert: str) -> list[dict[str, str]]:
    alerts = httpx.get(f"{stack['prometheus']}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return [a["labels"] for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def requests_counted(url: str) -> float:
    """model_requests_total of one server, summed over codes, from its own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(contract.REQUESTS.name + "{")
    )


# ---------------------------------------------------------------------------- routes


def test_up_prints_the_addresses_of_every_part(staging: dict[str, Any]) -> None:
    assert set(staging) >= {"stack", "gateway", "models", "prometheus", "alertmanager", "mailbox"}
    assert staging["stack"] == "staging"
    entry = staging["models"][MODEL]
    assert entry["host"] == f"{MODEL}.models-staging.svc.cluster.local"
    assert set(entry["versions"]) == {"v1.0.0", "v1.1.0"}
    for version, url in entry["versions"].items():
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/version", timeout=5).json()["version"] == version
    for url in (staging["gateway"], staging["prometheus"], staging["alertmanager"]):
        assert url.startswith("http://127.0.0.1:")
    assert Path(staging["mailbox"]).is_dir()


def test_weighted_split_matches_the_weights(staging: dict[str, Any]) -> None:
    total = 2000
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=10, cookies=no_cookie_jar()) as client:
        for _ in range(total):
            response = predict(client, staging)
            assert response.status_code == 200
            version = response.headers[contract.VERSION_HEADER]
            assert response.json()["version"] == version
            assert f"model-version={version};" in response.headers["set-cookie"]
            seen[version] += 1
    print(f"weighted split over {total} requests: {dict(seen)} for weights {WEIGHTS}")
    for version, weight in WEIGHTS.items():
        assert within(seen[version], total, weight), (seen, WEIGHTS)


def test_header_override_always_reaches_its_version(staging: dict[str, Any]) -> None:
    with httpx.Client(timeout=10, cookies=no_cookie_jar()) as client:
        for value, version in OVERRIDES.items():
            other = "v1.0.0" if version == "v1.1.0" else "v1.1.0"
            for _ in range(50):
                # The override comes before the sticky routes: a cookie for the other version loses.
                headers = {contract.VERSION_HEADER: value, "cookie": f"model-version={other}"}
                response = predict(client, staging, headers)
                assert response.headers[contract.VERSION_HEADER] == version
                assert response.json()["version"] == version


def test_sticky_users_keep_their_version_and_spread_by_weight(staging: dict[str, Any]) -> None:
    users = 600
    first: Counter[str] = Counter()
    with httpx.Client(timeout=10, cookies=no_cookie_jar()) as client:
        for user in range(users):
            response = predict(client, staging, {"cookie": f"user=u{user}"})
            version = response.headers[contract.VERSION_HEADER]
            first[version] += 1
            if user < 5:
                cookie = response.headers["set-cookie"].split(";")[0]
                answers = {
                    predict(client, staging, {"cookie": f"user=u{user}; {cookie}"}).headers[
                        contract.VERSION_HEADER
                    ]
                    for _ in range(100)
                }
                assert answers == {version}
    print(f"first versions of {users} users: {dict(first)} for weights {WEIGHTS}")
    for version, weight in WEIGHTS.items():
        assert within(first[version], users, weight), (first, WEIGHTS)


def test_mirror_copies_its_share_and_clients_see_only_primaries(dev: dict[str, Any]) -> None:
    shadow_url = dev["models"][MODEL]["versions"]["v1.1.0"]
    before = requests_counted(shadow_url)
    total = 1000
    answered: Counter[str] = Counter()
    with httpx.Client(timeout=10, cookies=no_cookie_jar()) as client:
        for _ in range(total):
            response = predict(client, dev)
            answered[response.headers[contract.VERSION_HEADER]] += 1
            body = response.json()
            assert body.get("version", response.headers[contract.VERSION_HEADER]) != "v1.1.0"
    assert set(answered) == {"v1.0.0", BROKEN}

    def settled() -> float | None:
        # Mirrored requests finish in the background: wait until the counter stops moving.
        first = requests_counted(shadow_url)
        time.sleep(0.5)
        return first if requests_counted(shadow_url) == first else None

    mirrored = wait_for("the shadow's counter settles", settled, 20) - before
    print(f"mirrored {mirrored:g} of {total} requests at {SHADOW_PERCENT}%")
    assert within(int(mirrored), total, SHADOW_PERCENT), mirrored


def ps(root: Path, stack: str) -> tuple[int, list[dict[str, Any]]]:
    proc = modelctl(root, "ps", "--stack", stack, "--json")
    rows: list[dict[str, Any]] = json.loads(proc.stdout)["processes"]
    return proc.returncode, rows


def test_each_replica_is_an_endpoint_of_its_subset_and_a_target_of_its_own(staging: dict[str, Any]) -> None:
    pods = staging["models"][MODEL]["pods"]
    assert {version: len(urls) for version, urls in pods.items()} == dict.fromkeys(WEIGHTS, REPLICAS)
    before = {url: requests_counted(url) for url in pods["v1.1.0"]}
    with httpx.Client(timeout=10, cookies=no_cookie_jar()) as client:
        for _ in range(60):
            response = predict(client, staging, {contract.VERSION_HEADER: "canary"})
            assert response.status_code == 200
    served = {url: requests_counted(url) - count for url, count in before.items()}
    print(f"60 requests to v1.1.0 across its replicas: {served}")
    assert all(n > 0 for n in served.values()), served  # Envoy balances over every replica
    assert sum(served.values()) == 60

    def targets() -> list[dict[str, Any]]:
        return query(staging, 'up{job="fraud-detection", pod=~"fraud-detection-v1-1-0-.+"} == 1')

    up = wait_for("Prometheus scrapes each replica", lambda: len(targets()) == REPLICAS, 30)
    assert up
    assert len({t["metric"]["pod"] for t in targets()}) == REPLICAS


def test_envoy_statistics_count_what_callers_got_by_model_and_version(staging: dict[str, Any]) -> None:
    series = f'sum by (version) (envoy_cluster_upstream_rq_completed{{model="{MODEL}", namespace="models-staging"}})'

    def counted() -> dict[str, float]:
        return {r["metric"]["version"]: float(r["value"][1]) for r in query(staging, series)}

    def settled() -> dict[str, float] | None:
        # Earlier tests' requests are still reaching Prometheus: wait until the counts stop moving.
        first = counted()
        time.sleep(2.5)
        return first if counted() == first else None

    before = wait_for("Envoy's counters settle in Prometheus", settled, 30)
    with httpx.Client(timeout=10, cookies=no_cookie_jar()) as client:
        answered = Counter(predict(client, staging).headers[contract.VERSION_HEADER] for _ in range(200))

    def caught_up() -> dict[str, float] | None:
        now = counted()
        delta = {v: now.get(v, 0) - before.get(v, 0) for v in now}
        return delta if sum(delta.values()) >= 200 else None

    delta = wait_for("Envoy's counters reach Prometheus", caught_up, 30)
    assert {v: int(n) for v, n in delta.items() if n} == dict(answered)


def test_a_killed_replica_is_restarted_with_back_off_and_callers_see_no_error(
    repo: Path, staging: dict[str, Any]
) -> None:
    _, rows = ps(repo, "staging")
    victim = next(r for r in rows if r["kind"] == "server" and r["version"] == "v1.0.0")
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()

    def waiting() -> dict[str, Any] | None:
        code, now = ps(repo, "staging")
        row = next(r for r in now if r["name"] == victim["name"])
        return {**row, "exit": code} if row["state"] == "waiting" else None

    row = wait_for("ps shows the pod in back-off", waiting, 10)
    assert row["exit"] == 2  # a pod not running is a finding
    assert row["last_exit"]["signal"] == "SIGKILL"
    assert row["restarts"] == 0
    # Meanwhile the gateway retries on the other replicas (connect-failure, previous hosts).
    with httpx.Client(timeout=10, cookies=no_cookie_jar()) as client:
        codes = Counter(
            predict(client, staging, {contract.VERSION_HEADER: "stable"}).status_code for _ in range(30)
        )
    assert codes == Counter({200: 30})

    def ready() -> dict[str, Any] | None:
        code, now = ps(repo, "staging")
        row = next(r for r in now if r["name"] == victim["name"])
        return {**row, "exit": code} if row["healthy"] and code == 0 else None

    row = wait_for("the pod is restarted and ready again", ready, 90)
    print(f"killed replica ready again {time.monotonic() - killed:.1f} s after SIGKILL")
    assert time.monotonic() - killed >= 10  # Kubernetes' first back-off: 10 s
    assert row["restarts"] == 1
    assert row["pid"] != victim["pid"]
    assert row["port"] == victim["port"]  # a pod keeps its address across restarts
    text = modelctl(repo, "ps", "--stack", "staging").stdout
    assert "last exit: killed by SIGKILL" in text


# ---------------------------------------------------------------------------- alerts


def test_a_failing_version_fires_the_error_rate_alert_and_an_email_arrives(
    repo: Path, dev: dict[str, Any]
) -> None:
    mailbox = Path(dev["mailbox"])
    started = time.monotonic()
    traffic = modelctl(repo, "traffic", "--stack", "dev", "--requests", "400", "--json")
    assert traffic.returncode == 0, traffic.stderr
    summary = json.loads(traffic.stdout)
    assert summary["versions"][BROKEN]["errors"] == summary["versions"][BROKEN]["requests"] > 0
    assert summary["versions"]["v1.0.0"]["errors"] == 0

    labels = wait_for(
        "ModelHighErrorRate fires for the broken version", lambda: firing(dev, "ModelHighErrorRate"), 60
    )
    assert {a["version"] for a in labels} == {BROKEN}

    def email() -> Path | None:
        for path in sorted(mailbox.glob("*.eml")):
            text = path.read_text(encoding="utf-8", errors="replace")
            if "Subject: [FIRING:1] ModelHighErrorRate" in text and BROKEN in text:
                return path
        return None

    message = wait_for("the alert email reaches the mailbox", email, 30)
    print(f"error-rate alert emailed {time.monotonic() - started:.1f} s after traffic began: {message.name}")
    assert "To: oncall@example.com" in message.read_text(encoding="utf-8", errors="replace")

    def slack_text() -> str | None:
        for path in sorted(mailbox.glob("*-ml-slack.json")):
            post = json.loads(path.read_text(encoding="utf-8"))
            texts = [a.get("text", "") for a in post.get("attachments", [])]
            if any("ModelHighErrorRate" in a.get("title", "") for a in post.get("attachments", [])):
                return "\n".join(texts)
        return None

    text = wait_for("the Slack message reaches its sink", slack_text, 30)
    for part in (f"{BROKEN} fails", "of requests answered 5xx", "Runbook: ", "#modelhigherrorrate"):
        assert part in text, text


def test_shifted_feature_raises_its_drift_alert_and_unshifted_traffic_none(
    repo: Path, dev: dict[str, Any], staging: dict[str, Any]
) -> None:
    shifted = modelctl(repo, "traffic", "--stack", "dev", "--requests", "600", "--shift", "pca_1=3")
    assert shifted.returncode == 0, shifted.stderr
    # Enough that a pod's drift window (200 rows) fills with this traffic alone; with three pods a
    # version, a pod that has seen fewer rows has judged nothing yet (its gauge is NaN).
    plain = modelctl(repo, "traffic", "--stack", "staging", "--requests", "1000")
    assert plain.returncode == 0, plain.stderr

    def drifted() -> list[dict[str, str]]:
        return [a for a in firing(dev, "ModelFeatureDrift") if a["feature"] == "pca_1"]

    alerts = wait_for("ModelFeatureDrift fires for pca_1", drifted, 60)
    assert {a["version"] for a in alerts} >= {"v1.0.0"}
    series = contract.FEATURE_DRIFT.name + contract.selector({"feature": "pca_1", "version": "v1.0.0"})
    assert float(query(dev, series)[0]["value"][1]) < DRIFT_P_VALUE
    # Staging saw as many unshifted rows, and its rules ran as often: no drift.
    judged = [float(v["value"][1]) for v in query(staging, contract.FEATURE_DRIFT.name)]
    judged = [p for p in judged if not math.isnan(p)]
    assert judged, "staging's servers report drift statistics"
    assert min(judged) > DRIFT_P_VALUE
    assert firing(staging, "ModelFeatureDrift") == []


# ---------------------------------------------------------------------------- lifecycle


def test_up_again_changes_nothing_and_a_release_commit_reconciles(
    repo: Path, staging: dict[str, Any]
) -> None:
    before = json.loads(modelctl(repo, "ps", "--stack", "staging", "--json").stdout)["processes"]
    assert {**up(repo, "staging"), "rows": staging["rows"]} == staging
    assert json.loads(modelctl(repo, "ps", "--stack", "staging", "--json").stdout)["processes"] == before
    assert all(p["healthy"] for p in before)

    promoted = {"traffic": {"v1.1.0": 100}}
    write_stack(repo, "staging", promoted)
    run_git(repo, "commit", "-qam", "staging: promote v1.1.0")
    after = {**up(repo, "staging"), "rows": staging["rows"]}
    assert set(after["models"][MODEL]["versions"]) == {"v1.1.0"}
    assert after["models"][MODEL]["versions"]["v1.1.0"] == staging["models"][MODEL]["versions"]["v1.1.0"]
    with httpx.Client(timeout=10, cookies=no_cookie_jar()) as client:
        assert {predict(client, after).headers[contract.VERSION_HEADER] for _ in range(50)} == {"v1.1.0"}
    pids = {p["name"]: p["pid"] for p in before}
    rows = json.loads(modelctl(repo, "ps", "--stack", "staging", "--json").stdout)["processes"]
    now = {p["name"]: p["pid"] for p in rows}
    assert not [name for name in now if name.startswith("fraud-detection-v1-0-0-")]
    assert now == {n: p for n, p in pids.items() if n in now}


def test_down_leaves_nothing_running_or_listening(
    repo: Path, staging: dict[str, Any], dev: dict[str, Any]
) -> None:
    rows = [
        row
        for stack in ("staging", "dev")
        for row in json.loads(modelctl(repo, "ps", "--stack", stack, "--json").stdout)["processes"]
    ]
    for stack in ("staging", "dev"):
        proc = modelctl(repo, "down", "--stack", stack)
        assert proc.returncode == 0, proc.stderr
    for row in rows:
        assert not Path(f"/proc/{row['pid']}").exists() or _zombie(row["pid"]), row
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", row["port"])) != 0, row
    assert "is not up" in modelctl(repo, "ps", "--stack", "staging").stdout


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
