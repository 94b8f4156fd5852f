"""A small trained version (skops artifact, reference profile, ServingSpec) and server processes for the serving tests."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import skops.io
from sklearn.ensemble import HistGradientBoostingClassifier

from modelctl.core import drift
from modelctl.core.schema import Output, Signature
from modelctl.core.servingspec import ServingSpec
from modelctl.core.state import load_allow_list
from modelctl.core.trusted import reviewed

ROOT = Path(__file__).resolve().parents[1]
SIGNATURE = Signature.model_validate(
    {
        "features": [
            {"name": "amount", "type": "float", "min": 0.0, "max": 10_000.0},
            {"name": "hour", "type": "int", "min": 0, "max": 23},
            {"name": "merchant_risk", "type": "float", "min": 0.0, "max": 1.0},
            {"name": "is_foreign", "type": "bool"},
        ]
    }
)
OUTPUT = Output(classes=["legit", "fraud"], positive_class="fraud")


def reference_rows(count: int, seed: int) -> npt.NDArray[np.float64]:
    """Rows inside the signature, and inside the reference profile's range for seed 0 at large counts."""
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.gamma(2.0, 60.0, count).clip(0, 2_000),
            rng.integers(0, 24, count),
            rng.beta(2, 5, count),
            rng.integers(0, 2, count),
        ]
    ).astype(np.float64)


def labels_for(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    score = rows[:, 0] / 400 + 3 * rows[:, 2] + rows[:, 3] - 2.2
    return (score > 0).astype(np.int64)


def as_json_row(row: npt.NDArray[np.float64]) -> list[Any]:
    """A row with each value in its signature type, as a client would send it."""
    return [float(row[0]), int(row[1]), float(row[2]), bool(row[3])]


@dataclass(frozen=True)
class Version:
    spec: ServingSpec
    estimator: Any
    rows: npt.NDArray[np.float64]


def write_version(folder: Path) -> Version:
    """Train, save with skops and profile a small model; the spec as the registry record would give it."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = reference_rows(3_000, seed=0)
    estimator = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(rows, labels_for(rows))
    artifact = skops.io.dumps(estimator)
    (folder / "model.skops").write_bytes(artifact)
    profile_path = folder / "profile.npz"
    drift.fit_profile(rows, SIGNATURE.names, categorical=["is_foreign"]).save(profile_path)
    spec = ServingSpec(
        model="fraud-detection",
        version="v1.2.0",
        artifact_path=str(folder / "model.skops"),
        sha256=hashlib.sha256(artifact).hexdigest(),
        format="skops",
        # What `modelctl register` records: the artifact's types, each allowed by the reviewed list.
        trusted_types=tuple(
            reviewed(
                skops.io.get_untrusted_types(data=artifact),
                load_allow_list(Path(__file__).resolve().parents[1]),
                "model.skops",
            )
        ),
        signature=SIGNATURE,
        output=OUTPUT,
        profile_path=str(profile_path),
        profile_sha256=hashlib.sha256(profile_path.read_bytes()).hexdigest(),
    )
    return Version(spec, estimator, rows)


def copy_version(version: Version, folder: Path) -> Version:
    """The same version with its files copied into `folder`, for tests that damage them."""
    folder.mkdir(parents=True, exist_ok=True)
    artifact = shutil.copy(version.spec.artifact_path, folder / "model.skops")
    profile = shutil.copy(version.spec.profile_path, folder / "profile.npz")
    spec = dataclasses.replace(version.spec, artifact_path=str(artifact), profile_path=str(profile))
    return dataclasses.replace(version, spec=spec)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str

    def stop(self) -> tuple[int, str]:
        """Send SIGTERM and wait; the exit code and everything logged."""
        self.process.terminate()
        _, log = self.process.communicate(timeout=30)
        return self.process.returncode, log


def start_server(spec: ServingSpec, *flags: str) -> subprocess.Popen[str]:
    env = {**os.environ, **spec.to_env(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "serving", "--host", "127.0.0.1", *flags],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def running_server(served: Version) -> Iterator[ServerProcess]:
    """A real server process, ready, on a free port; stopped with SIGTERM afterwards."""
    process, url = serve_ready(lambda port: start_server(served.spec, "--port", str(port)))
    server = ServerProcess(process, url)
    yield server
    if process.poll() is None:
        server.stop()


def serve_ready(
    start: Callable[[int], subprocess.Popen[str]], attempts: int = 3
) -> tuple[subprocess.Popen[str], str]:
    """The server `start(port)` starts on a free port, once ready, and its URL. `free_port`'s
    port is free only when it is picked: a server finding it taken meanwhile (by another test's
    process) is started again on another."""
    for _ in range(attempts):
        port = free_port()
        process, url = start(port), f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, url)
        except AssertionError as error:
            if "Address already in use" in str(error):
                continue
            raise
        return process, url
    raise AssertionError(f"every one of {attempts} free ports was taken before the server bound it")


def wait_ready(process: subprocess.Popen[str], url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.communicate()[1]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not become ready")


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Version:
    return write_version(tmp_path_factory.mktemp("version"))
