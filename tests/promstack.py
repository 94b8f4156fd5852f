"""A real Prometheus scraping pods that come and go: the conditions of a cluster, made to happen.

Each `Pod` is one server's metrics (the contract's names and labels, as `serving.metrics`
exports them), with Istio's standard metrics of the requests it answered as the callers'
proxies report them (reporter="source": what the judge reads for requests, errors and latency),
on its own port, scraped as its own target with a `pod` label: stopping its
HTTP server fails its scrapes (Prometheus writes staleness markers), `restart_process` starts
its counters from 0 again (a restarted container), a pod first started late is born in the
window. `PrometheusServer` runs Debian's prometheus on a free port with its own TSDB folder,
stopped and restarted by pid (the TSDB kept), with an optional `--query.lookback-delta`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from modelctl.core import contract
from serving.metrics import LATENCY_BUCKETS, SCORE_BUCKETS
from tests.test_serving_helpers import free_port

SCRAPE_SECONDS = 1
WAIT_SECONDS = 60
MODEL = "fraud-detection"
NAMESPACE = "models-test"  # the staging stack of tests/factories.py
ISTIO = contract.MESH_SOURCES["istio"]
# Istio's default buckets of istio_request_duration_milliseconds (Envoy's histogram defaults).
ISTIO_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


@dataclass
class Pod:
    """One replica of `version`: its counters, histograms and feedback on a fixed port."""

    name: str
    version: str
    port: int = field(default_factory=free_port)
    server: WSGIServer | None = None
    thread: Thread | None = None

    def __post_init__(self) -> None:
        self._new_process()

    def _new_process(self) -> None:
        """Metrics as a freshly started server has them: every series present, at zero."""
        self.registry = CollectorRegistry()
        served = contract.SERVED_BY
        self.requests = Counter(
            contract.REQUESTS.name,
            contract.REQUESTS.help,
            contract.REQUESTS.label_names,
            registry=self.registry,
        )
        self.duration = Histogram(
            contract.DURATION.name,
            contract.DURATION.help,
            served,
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.score = Histogram(
            contract.SCORE.name, contract.SCORE.help, served, registry=self.registry, buckets=SCORE_BUCKETS
        )
        self.feedback = Counter(
            contract.FEEDBACK.name,
            contract.FEEDBACK.help,
            (*served, *contract.FEEDBACK.labels),
            registry=self.registry,
        )
        istio = ISTIO.matchers(NAMESPACE, MODEL, self.version)
        self.mesh_requests = Counter(
            ISTIO.requests.removesuffix("_total"),
            "Istio's requests",
            (*istio, "response_code"),
            registry=self.registry,
        )
        self.mesh_duration = Histogram(
            ISTIO.duration, "Istio's request durations", istio, registry=self.registry, buckets=ISTIO_BUCKETS
        )
        for code in ("200", "500"):
            self.requests.labels(MODEL, self.version, code)
            self.mesh_requests.labels(**istio, response_code=code)
        self.mesh_duration.labels(**istio)
        self.duration.labels(MODEL, self.version)
        self.score.labels(MODEL, self.version)

    def start(self) -> Pod:
        self.server, self.thread = start_http_server(self.port, "127.0.0.1", self.registry)
        return self

    def stop(self) -> None:
        """Its scrapes fail from now on; its counters keep counting what it serves meanwhile."""
        assert self.server is not None
        assert self.thread is not None
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.server = self.thread = None

    def restart_process(self) -> None:
        """The container restarts: the same pod (labels, port), its counters from 0."""
        self.stop()
        self._new_process()
        self.start()

    def serve(
        self, n: int, errors: int = 0, *, seed: int = 0, slower: float = 1.0, observe: bool = True
    ) -> None:
        """Count `n` requests, `errors` of them failed (500), as the server would."""
        istio = ISTIO.matchers(NAMESPACE, MODEL, self.version)
        for code, count in (("200", n - errors), ("500", errors)):
            self.requests.labels(MODEL, self.version, code).inc(count)
            self.mesh_requests.labels(**istio, response_code=code).inc(count)
        if not observe:
            return
        rng = np.random.default_rng(seed)
        duration, score = self.duration.labels(MODEL, self.version), self.score.labels(MODEL, self.version)
        called = self.mesh_duration.labels(**istio)
        for seconds in rng.lognormal(np.log(0.004 * slower), 0.4, size=n):
            duration.observe(seconds)
            called.observe(seconds * 1000)
        for value in rng.beta(2, 5, size=n):
            score.observe(value)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class PrometheusServer:
    """Debian's prometheus scraping `pods` every second (each a target labelled `pod`)."""

    def __init__(self, folder: Path, pods: Sequence[Pod], lookback: str | None = None) -> None:
        self.folder = folder
        self.pods = list(pods)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lookback = lookback
        self.process: subprocess.Popen[bytes] | None = None
        targets = "".join(
            f"      - {{targets: ['{p.target}'], labels: {{pod: {p.name}}}}}\n" for p in self.pods
        )
        (folder / "prometheus.yml").write_text(
            f"global: {{scrape_interval: {SCRAPE_SECONDS}s, evaluation_interval: {SCRAPE_SECONDS}s}}\n"
            f"scrape_configs:\n  - job_name: models\n    static_configs:\n{targets}"
        )

    def start(self) -> PrometheusServer:
        flags = [f"--query.lookback-delta={self.lookback}"] if self.lookback else []
        self.process = subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait('count(up{job="models"})', lambda v: v == len(self.pods))
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
        try:
            body = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return []
        result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait(self, promql: str, ok: Callable[[float], bool]) -> None:
        """Poll an instant query until its first value satisfies `ok` (bounded)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            value = self.value(promql)
            if value is not None and ok(value):
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus never answered {promql} as expected")

    def scraped(self, total: float) -> None:
        """Wait until Prometheus holds `total` requests of the model, then one more scrape."""
        self.wait(f'sum({contract.REQUESTS.name}{{model="{MODEL}"}})', lambda v: v == total)
        time.sleep(SCRAPE_SECONDS * 1.5)

    def down(self, pod: Pod) -> None:
        """Stop `pod`'s HTTP server and wait until a scrape of it has failed."""
        pod.stop()
        self.wait(f'up{{pod="{pod.name}"}}', lambda v: v == 0)

    def up(self, pod: Pod) -> None:
        if pod.server is None:
            pod.start()
        self.wait(f'up{{pod="{pod.name}"}}', lambda v: v == 1)


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    """Pods made by a test, each stopped at the end if it still serves."""
    made: list[Pod] = []
    yield made
    for pod in made:
        if pod.server is not None:
            pod.stop()
