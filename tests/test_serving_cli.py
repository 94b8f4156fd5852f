"""`modelctl serve`: a registered version fetched from a DVC remote, verified and served locally."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from modelctl.cli import main
from modelctl.repo import dvcstore
from tests.factories import model_doc, version_record, write_repo
from tests.test_serving_helpers import (
    ROOT,
    Version,
    as_json_row,
    reference_rows,
    served,
    wait_ready,
)

__all__ = ["served"]
MODEL = "fraud-detection"


def digests(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    return hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()  # md5: DVC addresses by it


def registered(root: Path, version: Version, status: str = "active") -> Path:
    """A repository registering `version` as v1.2.0, and a DVC remote folder holding its files."""
    record = version_record(MODEL, "v1.2.0")
    remote = root.parent / "remote"
    for key, path in (
        ("artifact", Path(version.spec.artifact_path)),
        ("profile", Path(version.spec.profile_path)),
    ):
        md5, sha256 = digests(path)
        record[key].update(md5=md5, sha256=sha256)
        target = remote / dvcstore.object_path(md5)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    record["artifact"].update(
        size=Path(version.spec.artifact_path).stat().st_size, trusted_types=list(version.spec.trusted_types)
    )
    record["status"] = status
    doc = model_doc(MODEL, versions=())
    doc.update(
        signature=version.spec.signature.model_dump(),
        output=version.spec.output.model_dump(),
        versions={"v1.2.0": record},
    )
    write_repo(root, models={MODEL: doc}, stacks={})
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    return remote


def test_serve_fetches_verifies_and_serves_a_registered_version(served: Version, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    remote = registered(root, served)
    process = subprocess.Popen(
        [sys.executable, "-m", "modelctl", "-C", str(root), "serve", MODEL, "v1.2.0", "--port", "0",
         "--remote", str(remote)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    stderr = process.stderr
    assert stderr is not None

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    log: list[str] = []
    try:
        while not (address := re.search(r"serving on (http://127\.0\.0\.1:(\d+))", "".join(log))):
            log.append(lines.get(timeout=120))
        url = address[1]
        assert int(address[2]) > 0  # --port 0: the port bound, not 0
        wait_ready(process, url)
        assert httpx.get(f"{url}/version").json()["sha256"] == served.spec.sha256
        row = as_json_row(reference_rows(1, seed=9)[0])
        assert httpx.post(f"{url}/predict", json={"features": row}).status_code == 200
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    reader.join(timeout=30)
    assert process.returncode == 0, "".join(log)
    assert "fetched and verified fraud-detection v1.2.0" in "".join(log)
    assert "stopped serving" in out


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("70000", "70000 is not a TCP port"),
        ("-1", "-1 is not a TCP port"),
        ("x", "'x' is not a whole number"),
    ],
)
def test_a_port_that_is_not_one_is_one_usage_line(
    given: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", MODEL, "v1.2.0", f"--port={given}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"argument --port: {problem}" in err


REFUSALS = [
    (
        "v9.0.0",
        "active",
        "version v9.0.0 of fraud-detection is not registered; register it first or use one of: v1.2.0",
    ),
    ("v1.2.0", "revoked", "version v1.2.0 of fraud-detection is revoked; serve another"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=["unknown", "revoked"])
def test_serve_refuses_unknown_and_revoked_versions(
    served: Version, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: tuple[str, str, str]
) -> None:
    version, status, message = case
    root = tmp_path / "repo"
    registered(root, served, status)
    assert main(["-C", str(root), "serve", MODEL, version]) == 1
    assert message in capsys.readouterr().err


def test_a_port_in_use_is_one_error_line(
    served: Version, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    remote = registered(root, served)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["-C", str(root), "serve", MODEL, "v1.2.0", "--port", str(port), "--remote", str(remote)])
    err = capsys.readouterr().err
    assert code == 1  # the error exit code, as for every command
    assert err.startswith("error: 127.0.0.1:"), err
    assert err.count("\n") == 1, err
    assert "serving on" not in err


def test_serve_exposes_the_server_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--max-batch-rows", "--max-wait-ms", "--feedback-store", "--feedback-secret", "--feedback-ttl-s",
                 "--drift-interval-s", "--drift-window", "--host", "--port", "--access-log"):  # fmt: skip
        assert flag in text
