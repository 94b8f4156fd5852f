"""The server as Kubernetes runs it: a process that refuses bad artifacts and drains on SIGTERM."""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FeedbackStore
from tests.test_serving_helpers import (
    ROOT,
    ServerProcess,
    Version,
    as_json_row,
    copy_version,
    free_port,
    reference_rows,
    running_server,
    serve_ready,
    served,
    start_server,
)

__all__ = ["running_server", "served"]
ROW = as_json_row(reference_rows(1, seed=2)[0])


def test_serves_predictions_and_metrics(running_server: ServerProcess) -> None:
    with httpx.Client(base_url=running_server.url, timeout=10) as client:
        assert client.post("/predict", json={"features": ROW}).status_code == 200
        assert client.get("/v2/health/live").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'model_predictions_total{model="fraud-detection",version="v1.2.0"} 1.0' in metrics.text


def test_a_gzip_body_is_predicted_by_the_running_server(running_server: ServerProcess) -> None:
    """uvicorn hands the body over still compressed: the server itself undoes Content-Encoding."""
    body = gzip.compress(orjson.dumps({"features": ROW}))
    with httpx.Client(base_url=running_server.url, timeout=10) as client:
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        answer = client.post("/predict", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert (
            answer.json()["prediction"]
            == client.post("/predict", json={"features": ROW}).json()["prediction"]
        )


def test_sigterm_finishes_in_flight_requests_then_exits(running_server: ServerProcess) -> None:
    body = orjson.dumps({"features": ROW})
    head = (
        "POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    port = int(running_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + body[:10])
        time.sleep(0.5)  # the server has read the head: the request is in flight
        running_server.process.terminate()
        wait_until_refused(port)  # it stopped accepting
        connection.sendall(body[10:])
        answer = connection.makefile("rb").readline()
    _, log = running_server.process.communicate(timeout=30)

    assert answer.startswith(b"HTTP/1.1 200"), log
    assert running_server.process.returncode == 0, log
    assert "Traceback" not in log


def wait_until_refused(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.1)
    raise AssertionError("the server still accepts connections after SIGTERM")


def run_to_exit(spec: Any) -> tuple[int, str]:
    process = start_server(spec, "--port", str(free_port()))
    _, log = process.communicate(timeout=60)
    return process.returncode, log


def test_a_tampered_artifact_stops_startup_with_one_line(served: Version, tmp_path: Path) -> None:
    version = copy_version(served, tmp_path)
    artifact = Path(version.spec.artifact_path)
    artifact.write_bytes(artifact.read_bytes() + b"\0")

    code, log = run_to_exit(version.spec)

    assert code != 0
    lines = log.strip().splitlines()
    assert len(lines) == 1, log
    assert "refusing to load it" in lines[0]


def test_a_missing_artifact_stops_startup_with_one_line(served: Version) -> None:
    code, log = run_to_exit(dataclasses.replace(served.spec, artifact_path="/nonexistent/model.skops"))
    assert code != 0
    assert log.strip().count("\n") == 0
    assert "cannot read the artifact" in log


def test_missing_configuration_stops_startup_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELCTL_")}
    process = subprocess.run(
        [sys.executable, "-m", "serving"],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert process.returncode == 2
    assert process.stderr.strip().count("\n") == 0
    assert "MODELCTL_MODEL is not set" in process.stderr


def test_feedback_counters_add_up_across_replicas(served: Version, feedback_store: FeedbackStore) -> None:
    """Two replicas of one version: summing their counters gives the Deployment's confusion matrix
    (what PromQL's sum by (actual, predicted) does), which per-pod gauges could not; each label
    goes to the replica that did not predict it."""
    rows = reference_rows(24, seed=12)
    truth = ["legit", "fraud", "fraud"] * 8
    replicas = []
    try:
        store = feedback_store.flags()
        for _ in range(2):
            process, url = serve_ready(lambda port: start_server(served.spec, "--port", str(port), *store))
            replicas.append(ServerProcess(process, url))
        expected: Counter[tuple[str, str]] = Counter()
        for index, (row, label) in enumerate(zip(rows, truth, strict=True)):
            replica, other = replicas[index % 2], replicas[1 - index % 2]
            answer = httpx.post(f"{replica.url}/predict", json={"features": as_json_row(row)}).json()
            feedback = {"receipt": answer["receipt"], "label": label, "value": 2.5}
            assert httpx.post(f"{other.url}/feedback", json=feedback).status_code == 200
            expected[(label, answer["prediction"])] += 1
        totals: Counter[tuple[str, str]] = Counter()
        value = 0.0
        for replica in replicas:
            for family in text_string_to_metric_families(httpx.get(f"{replica.url}/metrics").text):
                for sample in family.samples:
                    if sample.name == "model_feedback_total":
                        totals[(sample.labels["actual"], sample.labels["predicted"])] += int(sample.value)
                    elif sample.name == "model_feedback_value_sum":
                        value += sample.value
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.stop()
    assert +totals == expected
    assert sum(expected.values()) == 24
    assert value == 24 * 2.5
