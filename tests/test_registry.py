"""register, deprecate, revoke, models show/history: on a real git + dvc repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelctl.cli import main
from modelctl.core import yamlio
from modelctl.repo import dvcstore, gitutil
from tests import pipeline_repo
from tests.factories import run_git
from tests.pipeline_repo import MODEL


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_repo.template(tmp_path_factory)


@pytest.fixture
def root(template: Path, tmp_path: Path) -> Path:
    return pipeline_repo.copy(template, tmp_path / "repo")


def run(root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """Run the CLI with --json; (exit code, parsed stdout, stderr)."""
    code = main(["-C", str(root), *argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def snapshot(root: Path) -> tuple[str, str]:
    """HEAD and the model file: what a refused command must leave as it was."""
    return gitutil.head(root), (root / "models" / MODEL / "model.yaml").read_text(encoding="utf-8")


def test_registered_records_match_dvc_lock_at_their_source_commit(template: Path) -> None:
    for version in ("v1.0.0", "v1.1.0"):
        record = pipeline_repo.record(template, version)
        lock = yamlio.loads(gitutil.show(template, record.source_commit, "dvc.lock") or "", "dvc.lock")
        train = lock["stages"][f"train@{MODEL}"]["outs"][0]
        assert (record.artifact.md5, record.artifact.size) == (train["md5"], train["size"])
        cached = dvcstore.digest_file(template / ".dvc/cache" / dvcstore.object_path(record.artifact.md5))
        assert cached.sha256 == record.artifact.sha256
        assert record.artifact.trusted_types == [
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
        ]
        assert set(record.metrics) >= {"accuracy", "precision", "recall", "f1", "auc_roc"}
    old, new = pipeline_repo.record(template, "v1.0.0"), pipeline_repo.record(template, "v1.1.0")
    assert old.params["train"]["max_iter"] == 10
    assert new.params["train"]["max_iter"] == 20
    assert old.artifact.md5 != new.artifact.md5


def test_register_commits_only_the_model_file_and_refuses_the_same_artifact_twice(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline_repo.set_train_param(root, "max_iter", 15)
    pipeline_repo.repro_and_commit(root, "train: 15 iterations")
    trained_at = gitutil.head(root)

    code, data, _ = run(root, capsys, "register", MODEL, "--bump", "patch")

    assert code == 0
    assert data["version"] == "v1.1.1"
    assert data["record"]["source_commit"] == trained_at
    assert data["record"]["params"]["train"]["max_iter"] == 15
    assert run_git(root, "show", "--name-only", "--format=%s", "HEAD").split() == [
        "register",
        MODEL,
        "v1.1.1",
        f"models/{MODEL}/model.yaml",
    ]
    assert "# The registry entry of one model" in (root / "models" / MODEL / "model.yaml").read_text()
    before = snapshot(root)
    code, data, _ = run(root, capsys, "register", MODEL)
    assert code == 1
    assert "is already registered as v1.1.1" in data["errors"][0]
    assert snapshot(root) == before


def test_register_refuses_uncommitted_params(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline_repo.set_train_param(root, "max_iter", 15)
    before = snapshot(root)

    code, data, _ = run(root, capsys, "register", MODEL)

    assert code == 1
    assert data["errors"] == [
        "params.yaml: uncommitted changes in params.yaml; commit them first, "
        "so the record's source_commit reproduces this run"
    ]
    assert snapshot(root) == before


def test_register_refuses_outputs_that_differ_from_dvc_lock(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline_repo.set_train_param(root, "max_iter", 15)
    run_git(root, "commit", "-q", "-am", "params changed, not reproduced")
    before = snapshot(root)

    code, data, _ = run(root, capsys, "register", MODEL)

    assert code == 1
    assert data["errors"] == [
        f"dvc.lock: train@{MODEL} changed since dvc.lock ('dvc status' is not clean); "
        f"run 'dvc repro {' '.join(pipeline_repo.stages())}' and commit dvc.lock"
    ]
    assert snapshot(root) == before


@pytest.mark.parametrize("version", ["v1.1.0", "v1.0.9", "v0.9.0"])
def test_register_refuses_a_version_not_greater_than_the_latest(
    root: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    code, data, _ = run(root, capsys, "register", MODEL, "--version", version)

    assert code == 1
    assert data["errors"] == [
        f"models/{MODEL}/model.yaml: versions: version {version} is not greater than the latest, v1.1.0; "
        "pass a greater --version or use --bump"
    ]


def test_revoke_is_refused_while_a_stack_references_the_version(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(root)

    code, data, _ = run(root, capsys, "revoke", MODEL, "v1.0.0")

    assert code == 1
    assert data["errors"] == [
        f"Pulumi.staging.yaml: {MODEL} v1.0.0 is still referenced at traffic.v1.0.0; "
        f"move its traffic first: modelctl rollback {MODEL} --stack staging --to v1.1.0"
    ]
    assert snapshot(root) == before


def test_deprecate_then_revoke_is_final_and_shows_in_history(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline_repo.write_stacks(root, {"staging": {"v1.1.0": 100}})

    assert run(root, capsys, "deprecate", MODEL, "v1.0.0")[0] == 0
    assert run(root, capsys, "revoke", MODEL, "v1.0.0")[0] == 0
    code, data, _ = run(root, capsys, "deprecate", MODEL, "v1.0.0")

    assert code == 1
    assert "v1.0.0 of fraud-detection is revoked; revoked is final" in data["errors"][0]
    assert pipeline_repo.record(root, "v1.0.0").status == "revoked"
    assert "# The registry entry of one model" in (root / "models" / MODEL / "model.yaml").read_text()
    _, history, _ = run(root, capsys, "models", "history", MODEL)
    assert [(c["change"], c["subject"]) for c in history["v1.0.0"]] == [
        ("registered", f"register {MODEL} v1.0.0"),
        ("status active -> deprecated", f"deprecate {MODEL} v1.0.0"),
        ("status deprecated -> revoked", f"revoke {MODEL} v1.0.0"),
    ]
    assert [c["change"] for c in history["v1.1.0"]] == ["registered"]


def test_deprecate_keeps_a_serving_version_serving(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data, _ = run(root, capsys, "deprecate", MODEL, "v1.0.0")

    assert code == 0, data
    assert pipeline_repo.record(root, "v1.0.0").status == "deprecated"
    assert run(root, capsys, "check")[0] == 0


def test_no_commit_edits_the_file_and_leaves_git_alone(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline_repo.write_stacks(root, {"staging": {"v1.1.0": 100}})
    head = gitutil.head(root)

    assert run(root, capsys, "deprecate", MODEL, "v1.0.0", "--no-commit")[0] == 0

    assert gitutil.head(root) == head
    assert gitutil.dirty_paths(root) == [f"models/{MODEL}/model.yaml"]
    assert pipeline_repo.record(root, "v1.0.0").status == "deprecated"


def test_models_show_lists_versions_gates_and_where_they_serve(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data, _ = run(root, capsys, "models", "show", MODEL)

    assert code == 0
    assert data["gates"] == {"auc_roc": 0.95, "recall": 0.75}
    served = {row["version"]: row["served_by"] for row in data["versions"]}
    assert served == {
        "v1.0.0": [{"stack": "staging", "role": "traffic", "weight": 90}],
        "v1.1.0": [
            {"stack": "dev", "role": "traffic", "weight": 100},
            {"stack": "staging", "role": "traffic", "weight": 10},
        ],
    }
    for row in data["versions"]:
        assert row["passes_gates"] == (not row["failed_gates"])
    code, listed, _ = run(root, capsys, "models", "list")
    assert [(m["model"], m["latest"]) for m in listed] == [("churn", None), (MODEL, "v1.1.0")]
