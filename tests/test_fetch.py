"""fetch: the artifact by its content address, verified, written atomically, or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelctl.cli import main
from tests import pipeline_repo
from tests.pipeline_repo import MODEL


@pytest.fixture(scope="session")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose remote holds every version, shared by the tests that only read it."""
    root = pipeline_repo.copy(
        pipeline_repo.template(tmp_path_factory), tmp_path_factory.mktemp("pushed") / "repo"
    )
    pipeline_repo.push_all(root)
    return root


@pytest.fixture
def root(pushed: Path, tmp_path: Path) -> Path:
    return pipeline_repo.copy(pushed, tmp_path / "repo")


def fetch(capsys: pytest.CaptureFixture[str], *argv: str, repo: Path | None = None) -> tuple[int, list[str]]:
    code = main([*(["-C", str(repo)] if repo else []), "fetch", *argv, "--json"])
    data = json.loads(capsys.readouterr().out)
    return code, data["errors"] if code else data


def test_fetch_writes_the_registered_artifact_and_profile(
    pushed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = pipeline_repo.record(pushed, "v1.0.0")
    out, profile = tmp_path / "models" / "model.skops", tmp_path / "models" / "profile.npz"

    code, _ = fetch(capsys, MODEL, "v1.0.0", "-o", str(out), "--profile-out", str(profile), repo=pushed)

    assert code == 0
    assert pipeline_repo.md5_of(out) == record.artifact.md5
    assert pipeline_repo.md5_of(profile) == record.profile.md5
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.skops", "profile.npz"]


def test_fetch_refuses_a_tampered_remote_object_and_writes_nothing(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = pipeline_repo.record(root, "v1.1.0")
    pipeline_repo.tamper(root, record.artifact.md5)
    out = tmp_path / "models" / "model.skops"

    code, errors = fetch(capsys, MODEL, "v1.1.0", "-o", str(out), repo=root)

    assert code == 1
    assert len(errors) == 1
    assert (
        f"files/md5/{record.artifact.md5[:2]}/{record.artifact.md5[2:]}: content does not match" in errors[0]
    )
    assert "nothing was written" in errors[0]
    assert list(out.parent.iterdir()) == []


def test_fetch_by_address_works_without_a_repository(
    pushed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The init container's form: only the hashes and the remote URL, no git, no dvc."""
    record = pipeline_repo.record(pushed, "v1.1.0")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "model.skops"
    address = ["--md5", record.artifact.md5, "--sha256", record.artifact.sha256]

    code, _ = fetch(capsys, *address, "--remote", str(pipeline_repo.remote(pushed)), "-o", str(out))

    assert code == 0
    assert pipeline_repo.md5_of(out) == record.artifact.md5


def test_fetch_by_address_keeps_the_old_file_when_the_sha256_differs(
    pushed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = pipeline_repo.record(pushed, "v1.1.0")
    out = tmp_path / "model.skops"
    out.write_bytes(b"the previous artifact")
    address = ["--md5", record.artifact.md5, "--sha256", "0" * 64]

    code, errors = fetch(capsys, *address, "--remote", str(pipeline_repo.remote(pushed)), "-o", str(out))

    assert code == 1
    assert f"sha256 {record.artifact.sha256} != expected {'0' * 64}" in errors[0]
    assert out.read_bytes() == b"the previous artifact"
    assert [p.name for p in tmp_path.iterdir()] == ["model.skops"]


def test_fetch_names_the_stores_it_looked_in_when_the_object_is_missing(
    pushed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-remote"
    empty.mkdir()

    code, errors = fetch(
        capsys, "--md5", "1" * 32, "--sha256", "2" * 64, "--remote", str(empty), "-o", str(tmp_path / "m")
    )

    assert code == 1
    assert errors == [
        f"files/md5/11/{'1' * 30}: object not found in {empty}; "
        "rebuild and push it with 'modelctl reproduce --all' (or 'dvc push' from the clone that built it)"
    ]


def test_drift_uses_the_registered_profile_when_the_workspace_holds_another(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `dvc repro` on newer code the workspace profile is not the registered one; drift
    against a version still compares with that version's own profile, fetched by md5."""
    record = pipeline_repo.record(root, "v1.0.0")
    workspace = root / record.profile.path
    features = json.loads((root / "data" / MODEL / "features.json").read_text())["names"]
    current = root / "current.npy"
    np.save(current, np.load(root / "data" / MODEL / "X_test.npy"))
    workspace.write_bytes(b"not this version's profile")

    code = main(["-C", str(root), "drift", MODEL, "v1.0.0", "--current", str(current), "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [f["name"] for f in report["features"]] == features
    assert workspace.read_bytes() == b"not this version's profile"
