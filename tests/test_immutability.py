"""`modelctl check --base REV`: merged version records never change, except their status."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelctl.cli import main
from modelctl.core import yamlio
from tests.factories import run_git


def edit_model(repo: Path, edit: str, replacement: str) -> None:
    path = repo / "models/fraud-detection/model.yaml"
    text = path.read_text()
    assert edit in text
    path.write_text(text.replace(edit, replacement, 1))


def check(repo: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["-C", str(repo), "check", "--base", "main"])
    return code, capsys.readouterr().err


def test_unchanged_records_pass(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_git(repo, "checkout", "-q", "-b", "feature")
    assert check(repo, capsys) == (0, "")


def test_changed_metric_is_refused(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_model(repo, "auc_roc: 0.97", "auc_roc: 0.99")
    code, err = check(repo, capsys)
    assert code == 1
    assert "versions.v1.0.0.metrics: metrics of registered version v1.0.0 changed since main" in err
    assert "register a new version instead" in err


def test_status_change_is_allowed(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yamlio.load(repo / "models/fraud-detection/model.yaml")
    doc["versions"]["v1.1.0"]["status"] = "deprecated"
    # Stacks must stop naming it first; dev serves v1.1.0, so point dev elsewhere.
    stack = yamlio.load(repo / "Pulumi.dev.yaml")
    stack["config"]["modelctl:releases"]["fraud-detection"]["traffic"] = {"v1.0.0": 100}
    staging = yamlio.load(repo / "Pulumi.staging.yaml")
    staging["config"]["modelctl:releases"]["fraud-detection"]["traffic"] = {"v1.0.0": 100}
    yamlio.dump_file(repo / "models/fraud-detection/model.yaml", doc)
    yamlio.dump_file(repo / "Pulumi.dev.yaml", stack)
    yamlio.dump_file(repo / "Pulumi.staging.yaml", staging)
    assert check(repo, capsys) == (0, "")


def test_deprecated_version_may_not_gain_traffic(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yamlio.load(repo / "models/fraud-detection/model.yaml")
    doc["versions"]["v1.1.0"]["status"] = "deprecated"
    yamlio.dump_file(repo / "models/fraud-detection/model.yaml", doc)
    run_git(repo, "commit", "-qam", "deprecate v1.1.0")
    assert check(repo, capsys) == (0, "")
    staging = yamlio.load(repo / "Pulumi.staging.yaml")
    staging["config"]["modelctl:releases"]["fraud-detection"]["traffic"] = {"v1.0.0": 50, "v1.1.0": 50}
    yamlio.dump_file(repo / "Pulumi.staging.yaml", staging)
    code, err = check(repo, capsys)
    assert code == 1
    assert (
        "Pulumi.staging.yaml: config.modelctl:releases.fraud-detection.traffic.v1.1.0: deprecated version "
        "v1.1.0 of fraud-detection gains traffic (10% on main, 50% now); route the new traffic to an active version"
    ) in err


def test_a_hold_is_lifted_in_a_change_of_its_own(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Deleting `held:` by hand in the same edit that gives the version traffic is refused; the
    clearing alone passes, and so does the traffic once the clearing is merged."""
    path = repo / "Pulumi.staging.yaml"
    staging = yamlio.load(path)
    release = staging["config"]["modelctl:releases"]["fraud-detection"]
    release["traffic"] = {"v1.0.0": 100}
    release["held"] = {"v1.1.0": {"reason": "INC-7 error rate", "since": "2026-11-01T00:00:00Z"}}
    yamlio.dump_file(path, staging)
    run_git(repo, "commit", "-qam", "roll back and hold v1.1.0")
    del release["held"]
    release["traffic"] = {"v1.0.0": 90, "v1.1.0": 10}
    yamlio.dump_file(path, staging)
    code, err = check(repo, capsys)
    assert code == 1
    assert (
        "Pulumi.staging.yaml: config.modelctl:releases.fraud-detection.traffic.v1.1.0: v1.1.0 of fraud-detection "
        "was held at main (INC-7 error rate) and this change both lifts the hold and routes requests to it"
    ) in err
    assert "modelctl release-hold clear fraud-detection v1.1.0 --stack staging" in err
    release["traffic"] = {"v1.0.0": 100}
    yamlio.dump_file(path, staging)
    assert check(repo, capsys) == (0, "")
    run_git(repo, "commit", "-qam", "clear the hold on v1.1.0")
    release["traffic"] = {"v1.0.0": 90, "v1.1.0": 10}
    yamlio.dump_file(path, staging)
    assert check(repo, capsys) == (0, "")


def test_revoked_is_final(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yamlio.load(repo / "models/fraud-detection/model.yaml")
    for stack in ("dev", "staging"):
        path = repo / f"Pulumi.{stack}.yaml"
        stack_doc = yamlio.load(path)
        stack_doc["config"]["modelctl:releases"]["fraud-detection"]["traffic"] = {"v1.0.0": 100}
        yamlio.dump_file(path, stack_doc)
    doc["versions"]["v1.1.0"]["status"] = "revoked"
    yamlio.dump_file(repo / "models/fraud-detection/model.yaml", doc)
    run_git(repo, "commit", "-qam", "revoke v1.1.0")
    doc["versions"]["v1.1.0"]["status"] = "active"
    yamlio.dump_file(repo / "models/fraud-detection/model.yaml", doc)
    code, err = check(repo, capsys)
    assert code == 1
    assert "versions.v1.1.0.status: version v1.1.0 was revoked on main and cannot be reinstated" in err


def test_removed_version_is_refused(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for stack in ("dev", "staging"):
        path = repo / f"Pulumi.{stack}.yaml"
        doc = yamlio.load(path)
        doc["config"]["modelctl:releases"]["fraud-detection"]["traffic"] = {"v1.0.0": 100}
        yamlio.dump_file(path, doc)
    model = yamlio.load(repo / "models/fraud-detection/model.yaml")
    del model["versions"]["v1.1.0"]
    yamlio.dump_file(repo / "models/fraud-detection/model.yaml", model)
    code, err = check(repo, capsys)
    assert code == 1
    assert "versions.v1.1.0: version v1.1.0 was removed (it exists on main)" in err


def test_unknown_base_is_one_line(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["-C", str(repo), "check", "--base", "no-such-branch"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == (
        "error: no-such-branch: not a commit in this repository; "
        "pass a branch, tag or commit that exists (e.g. origin/main)"
    )
