"""reproduce and doctor: rebuild registered versions into the remote, and check what stacks serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelctl.cli import main
from modelctl.core import yamlio
from modelctl.repo import dvcstore, gitutil
from tests import pipeline_repo
from tests.pipeline_repo import MODEL


@pytest.fixture
def root(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    return pipeline_repo.copy(pipeline_repo.template(tmp_path_factory), tmp_path / "repo")


def run(root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(["-C", str(root), *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def states(report: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(o["version"], o["kind"]): o["state"] for o in report["objects"]}


def test_doctor_lists_every_served_object_missing_from_an_empty_remote(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = run(root, capsys, "doctor")

    assert code == 2
    assert set(states(report).values()) == {"missing"}
    assert len(report["objects"]) == 4
    assert {o["fix"] for o in report["objects"]} == {
        f"modelctl reproduce {MODEL} v1.0.0",
        f"modelctl reproduce {MODEL} v1.1.0",
    }


def test_doctor_passes_after_dvc_push_and_names_a_tampered_object(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline_repo.push_all(root)
    assert run(root, capsys, "doctor")[0] == 0
    code, reproduced = run(root, capsys, "reproduce", "--all")
    assert code == 0
    assert [(r["model"], r["version"], r["rebuilt"]) for r in reproduced] == [
        (MODEL, "v1.0.0", False),
        (MODEL, "v1.1.0", False),
    ]

    pipeline_repo.tamper(root, pipeline_repo.record(root, "v1.0.0").artifact.md5)
    code, report = run(root, capsys, "doctor")

    assert code == 2
    assert states(report) == {
        ("v1.0.0", "artifact"): "tampered",
        ("v1.0.0", "profile"): "ok",
        ("v1.1.0", "artifact"): "ok",
        ("v1.1.0", "profile"): "ok",
    }


def test_reproduce_rebuilds_an_older_version_into_the_remote_once(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = pipeline_repo.record(root, "v1.0.0")
    assert record.source_commit != gitutil.head(root)
    # Registered with the default thread count; the rebuilt bytes must not depend on it.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    code, done = run(root, capsys, "reproduce", MODEL, "v1.0.0")

    assert code == 0
    assert (done["rebuilt"], done["pushed"]) == (True, ["artifact", "profile"])
    for obj in (record.artifact, record.profile):
        location = dvcstore.Location.of(str(pipeline_repo.remote(root)))
        assert dvcstore.check_object(location, obj.md5, obj.sha256).state == "ok"
    assert gitutil.git(root, "worktree", "list").count("\n") == 1
    assert gitutil.dirty_paths(root) == []
    code, again = run(root, capsys, "reproduce", MODEL, "v1.0.0")
    assert (code, again["rebuilt"], again["pushed"]) == (0, False, [])
    _, report = run(root, capsys, "doctor")
    assert states(report)[("v1.0.0", "artifact")] == "ok"
    assert states(report)[("v1.1.0", "artifact")] == "missing"


def test_reproduce_refuses_a_record_its_source_commit_does_not_rebuild(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yamlio.load(root / "models" / MODEL / "model.yaml")
    real = doc["versions"]["v1.0.0"]["artifact"]["md5"]
    doc["versions"]["v1.0.0"]["artifact"]["md5"] = "0" * 32
    yamlio.dump_file(root / "models" / MODEL / "model.yaml", doc)

    code, report = run(root, capsys, "reproduce", MODEL, "v1.0.0")

    assert code == 1
    assert report["errors"] == [
        f"models/{MODEL}/model.yaml: versions.v1.0.0.artifact.md5: rebuilt artifact of v1.0.0 has md5 {real}, "
        f"the record says {'0' * 32}; python, packages, machine and kernel settings all match the record; "
        "so the stage code at that commit or the record itself is at fault; register a new version"
    ]
    assert not pipeline_repo.remote(root).exists() or not any(pipeline_repo.remote(root).rglob("*.part"))
    assert not (pipeline_repo.remote(root) / dvcstore.object_path(real)).exists()
    assert gitutil.git(root, "worktree", "list").count("\n") == 1
