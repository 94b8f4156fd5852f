"""The server as Kubernetes runs it: a process that refuses bad artifacts and drains on SIGTERM."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_serving_helpers import (
    ROOT,
    ServerProcess,
    Version,
    as_json_row,
    copy_version,
    free_port,
    reference_rows,
    running_server,
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


def test_sigterm_finishes_in_flight_requests_then_exits(running_server: ServerProcess) -> None:
    # The server waits up to 3 s to fill a batch: sent 1 s before SIGTERM, the request is still in flight.
    answers: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{running_server.url}/predict", json={"features": ROW}, timeout=30)
        )
    )
    request.start()
    time.sleep(1)
    code, log = running_server.stop()
    request.join(timeout=30)

    assert [a.status_code for a in answers] == [200]
    assert code == 0, log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{running_server.url}/v2/health/live", timeout=2)
    assert "Traceback" not in log


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
