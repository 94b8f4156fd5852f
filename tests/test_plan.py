"""`modelctl plan`: rendered-manifest diffs between a revision and the working tree, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from modelctl.core import yamlio
from tests.conftest import Cli
from tests.factories import full_docs, run_git, stack_doc, write_repo

MODEL = "fraud-detection"


def git_picture(root: Path) -> tuple[str, str, str]:
    return (
        run_git(root, "log", "--all", "--format=%H"),
        run_git(root, "status", "--porcelain", "--untracked-files=all", "--ignored"),
        run_git(root, "worktree", "list", "--porcelain"),
    )


def test_no_change_exits_0(repo: Path, cli: Cli) -> None:
    code, out, _ = cli(repo, "plan")
    assert code == 0
    assert out.splitlines() == [
        "plan against HEAD:",
        "  dev: no changes",
        "  prod: no changes",
        "  staging: no changes",
    ]


def test_a_canary_commit_shows_its_manifest_diff_and_exits_2(repo: Path, cli: Cli) -> None:
    cli(repo, "promote", MODEL, "--stack", "staging")
    before = git_picture(repo)
    code, out, _ = cli(repo, "plan", "--base", "HEAD~1")
    assert code == 2
    assert "  staging: " in out
    assert (
        "    fraud-detection: v1.0.0 90%, v1.1.0 10%; canary v1.1.0 from v1.0.0 -> v1.0.0 0%, v1.1.0 100%"
        in out
    )
    assert "+++ b/staging/fraud-detection/virtualservice.yaml" in out
    assert "\n-      weight: 90\n" in out
    assert "  prod: no changes" in out
    assert git_picture(repo) == before


def test_uncommitted_edits_are_planned_against_head(repo: Path, cli: Cli) -> None:
    cli(repo, "shadow", MODEL, "v1.1.0", "--stack", "prod", "--percent", "10", "--no-commit")
    code, out, _ = cli(repo, "plan", "--json")
    data = json.loads(out)
    assert code == 2
    assert data["base"] == "HEAD"
    assert data["changed"] is True
    assert (data["stacks"]["prod"]["changed"], data["stacks"]["prod"]["production"]) == (True, True)
    assert data["stacks"]["staging"]["changed"] is False
    assert data["stacks"]["prod"]["traffic"] == [
        {"model": MODEL, "before": "v1.0.0 100%", "after": "v1.0.0 100%; shadow v1.1.0 10%"}
    ]
    assert any("v1-1-0" in name for name in data["stacks"]["prod"]["files"]["added"])
    assert data["stacks"]["staging"]["diff"] == ""


def test_the_default_base_is_origin_main_when_present(repo: Path, cli: Cli) -> None:
    run_git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    cli(repo, "promote", MODEL, "--stack", "staging")
    code, out, _ = cli(repo, "plan", "--stack", "staging")
    assert code == 2
    assert out.startswith("plan against origin/main:\n  staging: ")


def test_a_plan_says_when_a_change_only_rolls_back(repo: Path, cli: Cli) -> None:
    """CI deploys a change that only restores without waiting for a reviewer (tools/ci.py)."""

    def restores(base: str) -> bool:
        code, out, _ = cli(repo, "plan", "--base", base, "--stack", "staging", "--json")
        assert code == 2
        return bool(json.loads(out)["stacks"]["staging"]["restores"])

    cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    assert restores("HEAD~1") is False  # a step
    cli(repo, "rollback", MODEL, "--stack", "staging", "--reason", "INC-7")
    assert restores("HEAD~1") is True
    assert restores("HEAD~2") is True  # from the 10% canary deployed before the step
    _, out, _ = cli(repo, "plan", "--base", "HEAD~1", "--stack", "staging")
    assert "  staging: 0 added, 4 changed, 3 removed (only rolls back)" in out
    # With another change of the stack (its replicas), the deploy is not only a rollback.
    path = repo / "Pulumi.staging.yaml"
    doc = yamlio.load(path)
    doc["config"]["modelctl:releases"][MODEL]["replicas"] = {"min": 3, "max": 6}
    yamlio.dump_file(path, doc)
    assert restores("HEAD~1") is False


def test_a_new_stack_is_all_additions(repo: Path, cli: Cli) -> None:
    yamlio.dump_file(repo / "Pulumi.qa.yaml", stack_doc({"v1.0.0": 100}, namespace="models-qa"))
    code, out, _ = cli(repo, "plan", "--stack", "qa", "--json")
    files = json.loads(out)["stacks"]["qa"]["files"]
    assert code == 2
    assert files["added"]
    assert files["removed"] == files["changed"] == []


def test_an_unknown_base_is_one_line(repo: Path, cli: Cli) -> None:
    code, out, err = cli(repo, "plan", "--base", "no-such-branch")
    assert code == 1
    assert out == ""
    assert err == (
        "error: no-such-branch: not a commit in this repository; "
        "pass a branch, tag or commit that exists (e.g. origin/main)\n"
    )


def _without_releases(root: Path, stack: str) -> None:
    doc = yamlio.load(root / f"Pulumi.{stack}.yaml")
    doc["config"]["modelctl:releases"] = {}
    yamlio.dump_file(root / f"Pulumi.{stack}.yaml", doc)


def test_a_plan_that_removes_every_model_of_a_stack_is_refused(repo: Path, cli: Cli) -> None:
    _without_releases(repo, "staging")
    code, out, err = cli(repo, "plan")
    assert code != 0  # an error (its code is the CLI convention), never "no changes"
    assert out == ""
    assert err.splitlines() == [
        "error: Pulumi.staging.yaml: config.modelctl:releases: this change removes every model of stack staging "
        "(18 objects deleted on deploy); restore its modelctl:releases, or pass --allow-destroy if the stack is "
        "meant to go"
    ]


def test_allow_destroy_plans_it(repo: Path, cli: Cli) -> None:
    _without_releases(repo, "staging")
    code, out, _ = cli(repo, "plan", "--allow-destroy", "--json")
    plan = json.loads(out)["stacks"]["staging"]
    assert code == 2
    assert plan["destroys"] is True
    assert "fraud-detection/deployment-v1-1-0.yaml" in plan["files"]["removed"]


def test_a_deleted_stack_file_is_a_destroy_too(repo: Path, cli: Cli) -> None:
    (repo / "Pulumi.dev.yaml").unlink()
    code, _, err = cli(repo, "plan")
    assert "removes every model of stack dev" in err
    code, out, _ = cli(repo, "plan", "--allow-destroy")
    assert code == 2
    assert "  dev: 0 added, 0 changed, " in out


def test_removing_one_model_of_several_needs_no_flag(tmp_path: Path, cli: Cli) -> None:
    repo = write_repo(tmp_path / "repo", *full_docs())
    doc = yamlio.load(repo / "Pulumi.staging.yaml")
    del doc["config"]["modelctl:releases"]["churn"]
    yamlio.dump_file(repo / "Pulumi.staging.yaml", doc)
    code, out, _ = cli(repo, "plan", "--json")
    assert code == 2
    assert json.loads(out)["stacks"]["staging"]["destroys"] is False
    assert "churn/deployment-v2-0-0.yaml" in json.loads(out)["stacks"]["staging"]["files"]["removed"]


def test_a_misspelt_releases_key_is_refused_before_planning(repo: Path, cli: Cli) -> None:
    """The issue's example: `modelctl:release:` made plan show every object of staging removed."""
    stack = repo / "Pulumi.staging.yaml"
    stack.write_text(stack.read_text().replace("modelctl:releases:", "modelctl:release:"))
    code, out, err = cli(repo, "plan")
    assert code != 0  # an error (its code is the CLI convention), never "no changes"
    assert out == ""
    assert "unknown key 'modelctl:release'; did you mean 'modelctl:releases'?" in err
