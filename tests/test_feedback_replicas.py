"""Ground truth across replicas, restarts and a week (issue 23, case 16): an A/B split of two
versions, three replicas of one and one of the other, behind Envoy (random balancing, as a
Service spreads requests over pods), Prometheus with the rendered rules, the feedback store.

Predictions are made with request ids that repeat; then every server is restarted one by one with
its clock a week ahead (libfaketime), so no label reaches the process that made its prediction and
every label is a week late; each label is posted twice at once, through the balancer. Every label
counts exactly once, on its own prediction and version: in the confusion counters, in `ab analyze`,
in the live accuracy gauge and the label coverage. Every process is started here and stopped by
its pid; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelctl.cli.local import held_out
from modelctl.core import contract, yamlio
from modelctl.core.state import load_model
from onebox.processes import free_port
from onebox.traffic import json_rows
from tests import pipeline_repo
from tests.conftest import FeedbackStore, run_fresh
from tests.factories import run_git, stack_doc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed (make tools)"),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (make tools)"),
]

MODEL = pipeline_repo.MODEL
STACK = "dev"
NAMESPACE = f"models-{STACK}"
A, B = "v1.0.0", "v1.1.0"
REPLICAS = {A: 3, B: 1}
PREDICTIONS = 240
REQUEST_IDS = 40  # each id is sent by six different predictions
WEEK = "+7d"
SCRAPE_SECONDS = 1
WAIT_SECONDS = 120
ENVOY = Path(sys.executable).parent / "envoy"


@dataclass
class Server:
    version: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Cluster:
    root: Path
    folder: Path
    store: FeedbackStore
    servers: list[Server] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    balancer: str = ""
    prometheus: str = ""

    def start(self, server: Server, clock: str = "") -> None:
        argv = [
            str(Path(sys.executable).parent / "modelctl"), "-C", str(self.root), "serve", MODEL, server.version,
            "--host", "127.0.0.1", "--port", str(server.port), "--drift-interval-s", "3600", *self.store.flags(),
        ]  # fmt: skip
        if clock:
            argv = [shutil.which("faketime") or "faketime", "-f", clock, *argv]
        with server.log.open("ab") as log:
            server.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        ready(f"http://127.0.0.1:{server.port}/v2/health/ready", server.proc, server.log)

    def stop(self, server: Server) -> None:
        if server.proc is not None:
            stop(server.proc)
            server.proc = None


def ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {WAIT_SECONDS} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process and everything in its session: faketime runs the server as its child,
    which a signal to faketime alone would leave running (each was started in a new session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a child that outlived its parent


def envoy_config(port: int, admin: int, servers: list[Server]) -> str:
    """One listener, a cluster per version (RANDOM over its replicas), weighted 50/50."""

    def cluster(version: str) -> str:
        endpoints = ", ".join(
            f"{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {s.port}}}}}}}}}"
            for s in servers
            if s.version == version
        )
        return (
            f"  - name: {version}\n    type: STATIC\n    lb_policy: RANDOM\n    connect_timeout: 2s\n"
            f"    load_assignment: {{cluster_name: {version}, endpoints: [{{lb_endpoints: [{endpoints}]}}]}}\n"
        )

    weighted = ", ".join(f"{{name: {v}, weight: 50}}" for v in REPLICAS)
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: service
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: service
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: {MODEL}
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{weighted_clusters: {{clusters: [{weighted}]}}}}
  clusters:
{"".join(cluster(v) for v in REPLICAS)}"""


def prometheus_config(servers: list[Server], rules: Path) -> str:
    targets = ", ".join(f"'127.0.0.1:{s.port}'" for s in servers)
    return (
        f"global: {{scrape_interval: {SCRAPE_SECONDS}s, evaluation_interval: {SCRAPE_SECONDS}s}}\n"
        f"rule_files: ['{rules}']\n"
        "scrape_configs:\n  - job_name: models\n"
        f"    static_configs: [{{targets: [{targets}], labels: {{namespace: {NAMESPACE}}}}}]\n"
    )


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()  # a starting Prometheus answers 503 in plain text
    return response.json()["data"]["result"]  # type: ignore[no-any-return]


def wait_for(url: str, promql: str, expected: float) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            found = query(url, promql)
        except httpx.HTTPError:  # still starting
            found = []
        if found and float(found[0]["value"][1]) == expected:
            return
        time.sleep(0.3)
    raise AssertionError(f"Prometheus never answered {promql} with {expected}: {query(url, promql)}")


def scraped_since_start(cluster: Cluster) -> None:
    """Every server up in Prometheus with a sample taken after its (re)start."""
    wait_for(cluster.prometheus, 'count(up{job="models"} == 1)', len(cluster.servers))
    time.sleep(SCRAPE_SECONDS * 2.5)


def modelctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelctl", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, feedback_store: FeedbackStore) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("replicas")
    root = pipeline_repo.copy(pipeline_repo.template(tmp_path_factory), folder / "repo")
    pipeline_repo.push_all(root)
    yamlio.dump_file(root / f"Pulumi.{STACK}.yaml", stack_doc({A: 100}, namespace=NAMESPACE))
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", "dev serves v1.0.0")
    split = modelctl(
        root, "ab", MODEL, "--split", f"{A}=50,{B}=50", "--stack", STACK,
        "--metric", "accuracy", "--effect", "0.01", "--min-duration", "0s",
    )  # fmt: skip
    assert split.returncode == 0, split.stderr
    rendered = modelctl(root, "render", "--stack", STACK, "--out", str(folder / "rendered"))
    assert rendered.returncode == 0, rendered.stderr

    state = Cluster(root, folder, feedback_store)
    for version, count in REPLICAS.items():
        state.servers += [Server(version, free_port(), folder / f"{version}-{i}.log") for i in range(count)]
    try:
        for server in state.servers:
            state.start(server)
        port, admin = free_port(), free_port()
        (folder / "envoy.yaml").write_text(envoy_config(port, admin, state.servers))
        envoy = subprocess.Popen(
            [str(ENVOY), "-c", str(folder / "envoy.yaml"), "--concurrency", "1", "--log-level", "warn",
             "--disable-hot-restart"],
            stdout=subprocess.DEVNULL, stderr=(folder / "envoy.log").open("wb"), start_new_session=True,
        )  # fmt: skip
        state.others.append(envoy)
        ready(f"http://127.0.0.1:{admin}/ready", envoy, folder / "envoy.log")
        state.balancer = f"http://127.0.0.1:{port}"
        rules = folder / "rendered" / "prometheus" / f"{MODEL}.rules.yml"
        (folder / "prometheus.yml").write_text(prometheus_config(state.servers, rules))
        prom_port = free_port()
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        state.others.append(prometheus)
        state.prometheus = f"http://127.0.0.1:{prom_port}"
        scraped_since_start(state)
        yield state
    finally:
        for server in state.servers:
            state.stop(server)
        for proc in state.others:
            stop(proc)


@dataclass
class Labelled:
    """The predictions as the application saw them, and what the labels did."""

    predictions: list[dict[str, Any]]
    truth: list[str]
    first: list[httpx.Response]
    again: list[httpx.Response]
    reused_id: httpx.Response


async def _predict(balancer: str, rows: list[list[Any]]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=30) as client:
        answers = []
        for index, row in enumerate(rows):
            response = await client.post(
                f"{balancer}/predict",
                json={"features": row},
                headers={"x-request-id": f"order-{index % REQUEST_IDS}"},
            )
            assert response.status_code == 200, response.text
            answers.append(response.json())
        return answers


async def _label_twice(balancer: str, bodies: list[dict[str, Any]]) -> tuple[list[httpx.Response], ...]:
    """Each label posted twice at once (a client retrying before the first answer came)."""
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        semaphore = asyncio.Semaphore(8)

        async def twice(body: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
            async with semaphore:
                one, two = await asyncio.gather(
                    client.post(f"{balancer}/feedback", json=body),
                    client.post(f"{balancer}/feedback", json=body),
                )
                return one, two

        pairs = await asyncio.gather(*(twice(body) for body in bodies))
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="module")
def labelled(cluster: Cluster) -> Labelled:
    spec = load_model(cluster.root, MODEL)
    features, labels = held_out(cluster.root, MODEL)
    rows = json_rows(features[:PREDICTIONS], [f.type for f in spec.signature.features])
    truth = [spec.output.classes[int(y)] for y in labels[:PREDICTIONS]]
    # Every fourth label is the other class: wrong predictions for the counters to tell apart.
    truth = [
        spec.output.classes[1 - spec.output.classes.index(t)] if i % 4 == 0 else t
        for i, t in enumerate(truth)
    ]
    predictions = run_fresh(_predict(cluster.balancer, rows))
    wait_for(cluster.prometheus, f'sum({contract.PREDICTIONS.name}{{model="{MODEL}"}})', PREDICTIONS)
    time.sleep(SCRAPE_SECONDS * 2)
    # A week later, every server restarted in turn (a rollout): none remembers anything.
    for server in cluster.servers:
        cluster.stop(server)
        cluster.start(server, clock=WEEK)
    scraped_since_start(cluster)
    bodies = [{"receipt": p["receipt"], "label": t} for p, t in zip(predictions, truth, strict=True)]
    first, again = run_fresh(_label_twice(cluster.balancer, bodies))
    # An application that still sends a request id alone is told what to send.
    reused_id = httpx.post(f"{cluster.balancer}/feedback", json={"request_id": "order-1", "label": "fraud"})
    return Labelled(predictions, truth, first, again, reused_id)


def expected_cells(labelled: Labelled) -> Counter[tuple[str, str, str]]:
    return Counter(
        (p["version"], actual, p["prediction"])
        for p, actual in zip(labelled.predictions, labelled.truth, strict=True)
    )


def test_requests_reach_every_replica_and_reuse_ids(labelled: Labelled) -> None:
    versions = Counter(p["version"] for p in labelled.predictions)
    assert set(versions) == {A, B}
    assert len({p["request_id"] for p in labelled.predictions}) == REQUEST_IDS
    assert len({p["receipt"] for p in labelled.predictions}) == PREDICTIONS


def test_every_label_is_taken_once_a_week_later_on_its_own_prediction(labelled: Labelled) -> None:
    for prediction, truth, one, two in zip(
        labelled.predictions, labelled.truth, labelled.first, labelled.again, strict=True
    ):
        assert (one.status_code, two.status_code) == (200, 200), (one.text, two.text)
        answers = (one.json(), two.json())
        assert sorted(a["counted"] for a in answers) == [False, True]  # one of the two counted
        for answer in answers:
            assert answer["version"] == prediction["version"]
            assert answer["predicted"] == [prediction["prediction"]]
            assert answer["correct"] == [truth == prediction["prediction"]]
    assert labelled.reused_id.status_code == 422
    assert "receipt" in labelled.reused_id.json()["error"]


def test_the_counters_add_up_across_replicas_and_restarts(cluster: Cluster, labelled: Labelled) -> None:
    promql = f'sum by (version, actual, predicted) ({contract.FEEDBACK.name}{{model="{MODEL}"}})'
    wait_for(cluster.prometheus, f'sum({contract.FEEDBACK.name}{{model="{MODEL}"}})', PREDICTIONS)
    time.sleep(SCRAPE_SECONDS * 2)
    found = {
        (s["metric"]["version"], s["metric"]["actual"], s["metric"]["predicted"]): float(s["value"][1])
        for s in query(cluster.prometheus, promql)
    }
    expected = expected_cells(labelled)
    assert {cell: n for cell, n in found.items() if n} == {cell: float(n) for cell, n in expected.items()}


def test_ab_analyze_sees_every_label(cluster: Cluster, labelled: Labelled) -> None:
    wait_for(cluster.prometheus, f'sum({contract.FEEDBACK.name}{{model="{MODEL}"}})', PREDICTIONS)
    time.sleep(SCRAPE_SECONDS * 2)
    proc = modelctl(cluster.root, "ab", "analyze", "--stack", STACK, "--prometheus", cluster.prometheus,
                    "--dry-run", "--json")  # fmt: skip
    assert proc.returncode in (0, 3), proc.stderr
    [analysis] = json.loads(proc.stdout)["analyses"]
    decision = analysis["decision"]
    versions = Counter(p["version"] for p in labelled.predictions)
    assert decision["labelled"] == {v: float(n) for v, n in versions.items()}
    assert decision["requests"] == {v: float(n) for v, n in versions.items()}
    assert decision["coverage"] == {A: 1.0, B: 1.0}


def test_the_live_accuracy_gauge_and_coverage_read_right_per_version(
    cluster: Cluster, labelled: Labelled
) -> None:
    cells = expected_cells(labelled)
    for version in REPLICAS:
        labels = sum(n for (v, _, _), n in cells.items() if v == version)
        right = sum(n for (v, a, p), n in cells.items() if v == version and a == p)
        selector = f'{{model="{MODEL}",version="{version}"}}'
        # rate() extrapolates each process's series to the window's end by its own scrape times,
        # a share of the series' age: here every series is seconds old (the labels' processes
        # were restarted, the predictions' are gone), so the ratios come within their tolerance
        # as the series age, every label having been counted after a scrape of its zeros.
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            accuracy = query(cluster.prometheus, contract.LIVE_QUALITY["accuracy"] + selector)
            coverage = query(cluster.prometheus, contract.LABEL_COVERAGE + selector)
            found = [float(answer[0]["value"][1]) for answer in (accuracy, coverage) if answer]
            if found == pytest.approx([right / labels, 1.0], abs=0.02) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found == pytest.approx([right / labels, 1.0], abs=0.02), version
    assert np.isclose(sum(cells.values()), PREDICTIONS)
