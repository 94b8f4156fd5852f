"""Release commands in a real git repository: one commit touching only the stack file, or nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.render import render_files
from modelctl.cli import main
from modelctl.core import yamlio
from modelctl.core.state import load_state
from tests.conftest import Cli
from tests.factories import commit_at, fake_hex, model_doc, redate_head, run_git, stack_doc, write_repo

MODEL = "fraud-detection"
VERSIONS = ("v1.0.0", "v1.1.0", "v1.2.0")


def prod_doc(traffic: dict[str, int], soak: bool = True) -> dict[str, Any]:
    """A production stack with a pinned image; with `soak`, versions serve on staging for 24h first."""
    env: dict[str, Any] = {
        "namespace": "models-prod",
        "image": "ghcr.io/acme/modelctl-serving:0.1.0@sha256:" + fake_hex("image", 64),
    }
    if soak:
        env["requires"] = {"stack": "staging", "soak": "24h"}
    return stack_doc(traffic, production=True, **env)


def two_days_ago() -> str:
    return (datetime.now(UTC) - timedelta(days=2)).isoformat()


def build_repo(
    root: Path, stacks: dict[str, dict[str, Any]] | None = None, statuses: dict[str, str] | None = None
) -> Path:
    """Staging and prod on v1.0.0 (prod requires 24h on staging), committed two days ago."""
    model = model_doc(versions=VERSIONS)
    for version, status in (statuses or {}).items():
        model["versions"][version]["status"] = status
    default_stacks = {
        "staging": stack_doc({"v1.0.0": 100}),
        "prod": prod_doc({"v1.0.0": 100}),
    }
    write_repo(root, {MODEL: model}, stacks or default_stacks, git=False)
    run_git(root, "init", "-q", "-b", "main")
    commit_at(root, two_days_ago(), "initial state", ".")
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repo(tmp_path / "repo")


def traffic(root: Path, stack: str) -> dict[str, int]:
    return dict(load_state(root).stack(stack).config.releases[MODEL].traffic)


def head_files(root: Path) -> list[str]:
    return run_git(root, "show", "--name-only", "--format=", "HEAD").split()


def head_subject(root: Path) -> str:
    return run_git(root, "log", "-1", "--format=%s").strip()


def git_picture(root: Path) -> tuple[str, str, str, dict[str, bytes]]:
    """Everything a refused command must leave alone: log, status, index and the files."""
    files = {p.name: p.read_bytes() for p in sorted(root.glob("Pulumi.*.yaml"))}
    return (
        run_git(root, "log", "--all", "--format=%H"),
        run_git(root, "status", "--porcelain", "--untracked-files=all"),
        run_git(root, "diff", "--cached"),
        files,
    )


def test_canary_commits_only_the_stack_file_with_a_clear_message(repo: Path, cli: Cli) -> None:
    code, out, _ = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    assert code == 0
    assert traffic(repo, "staging") == {"v1.0.0": 95, "v1.1.0": 5}
    assert head_files(repo) == ["Pulumi.staging.yaml"]
    assert head_subject(repo) == "canary: fraud-detection v1.1.0 at 5% on staging (v1.0.0 95%)"
    assert "+        v1.1.0: 5" in out
    assert run_git(repo, "status", "--porcelain") == ""


def test_canary_steps_then_promote_then_next_release(repo: Path, cli: Cli) -> None:
    for _ in range(2):
        cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    assert traffic(repo, "staging") == {"v1.0.0": 90, "v1.1.0": 10}
    assert cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging", "--weight", "40")[0] == 0
    assert traffic(repo, "staging") == {"v1.0.0": 60, "v1.1.0": 40}
    assert cli(repo, "promote", MODEL, "--stack", "staging")[0] == 0
    assert traffic(repo, "staging") == {"v1.0.0": 0, "v1.1.0": 100}
    assert (
        head_subject(repo)
        == "promote: fraud-detection v1.1.0 to 100% on staging (v1.0.0 kept at 0% for rollback)"
    )
    cli(repo, "canary", MODEL, "v1.2.0", "--stack", "staging")
    cli(repo, "promote", MODEL, "--stack", "staging")
    assert traffic(repo, "staging") == {"v1.1.0": 0, "v1.2.0": 100}
    assert len(run_git(repo, "log", "--format=%H").split()) == 7


def test_the_edit_keeps_comments_order_and_other_keys(repo: Path, cli: Cli) -> None:
    path = repo / "Pulumi.staging.yaml"
    original = "# Staging: reviewed by the ML platform team.\n" + path.read_text().replace(
        "    production: false\n", "    production: false  # never true here\n"
    )
    path.write_text(original)
    commit_at(repo, two_days_ago(), "comment the stack", "Pulumi.staging.yaml")
    cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    diff = run_git(repo, "show", "--format=", "--unified=0", "HEAD")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [
        "-        v1.0.0: 100",
        "+        v1.0.0: 95",
        "+        v1.1.0: 5",
        "+      rollback_to: v1.0.0",
    ]
    assert path.read_text().startswith("# Staging: reviewed by the ML platform team.\n")


def test_rollback_after_canary_and_promote_restores_the_stable_state_and_holds(repo: Path, cli: Cli) -> None:
    stable = (repo / "Pulumi.staging.yaml").read_text()
    cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    cli(repo, "promote", MODEL, "--stack", "staging")
    code, out, _ = cli(repo, "rollback", MODEL, "--stack", "staging", "--reason", "INC-7")
    assert code == 0, out
    text = (repo / "Pulumi.staging.yaml").read_text()
    assert text.startswith(
        stable + "      held:\n        v1.1.0:\n          reason: INC-7\n          since: "
    )
    assert head_files(repo) == ["Pulumi.staging.yaml"]
    assert head_subject(repo) == "rollback: fraud-detection to v1.0.0 100% on staging, holding v1.1.0"


def test_rollback_restores_the_rendered_manifests(repo: Path, cli: Cli) -> None:
    before = render_files(load_state(repo), "staging")
    cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    cli(repo, "promote", MODEL, "--stack", "staging")
    assert render_files(load_state(repo), "staging") != before
    cli(repo, "rollback", MODEL, "--stack", "staging")
    assert render_files(load_state(repo), "staging") == before


def test_rollback_to_a_named_version(repo: Path, cli: Cli) -> None:
    cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    cli(repo, "promote", MODEL, "--stack", "staging")
    cli(repo, "canary", MODEL, "v1.2.0", "--stack", "staging")
    cli(repo, "promote", MODEL, "--stack", "staging")
    assert cli(repo, "rollback", MODEL, "--stack", "staging", "--to", "v1.1.0")[0] == 0
    assert traffic(repo, "staging") == {"v1.1.0": 100}


def test_ab_with_sticky_sessions(repo: Path, cli: Cli) -> None:
    code, _, _ = cli(
        repo, "ab", MODEL, "--stack", "staging", "--split", "v1.0.0=50,v1.1.0=50", "--sticky", "--metric",
        "accuracy", "--effect", "0.02",
    )  # fmt: skip
    assert code == 0
    release = load_state(repo).stack("staging").config.releases[MODEL]
    assert dict(release.traffic) == {"v1.0.0": 50, "v1.1.0": 50}
    assert release.sticky is not None
    assert head_subject(repo) == (
        "ab: fraud-detection v1.0.0 50%, v1.1.0 50% on staging, sticky by cookie model-version; "
        "experiment on accuracy, effect 0.02, at least 7d"
    )


def test_shadow_on_and_off(repo: Path, cli: Cli) -> None:
    assert cli(repo, "shadow", MODEL, "v1.1.0", "--stack", "staging", "--percent", "20")[0] == 0
    shadow = load_state(repo).stack("staging").config.releases[MODEL].shadow
    assert shadow is not None
    assert (shadow.version, shadow.percent) == ("v1.1.0", 20)
    assert (
        "      shadow:\n        version: v1.1.0\n        percent: 20\n"
        in (repo / "Pulumi.staging.yaml").read_text()
    )
    assert cli(repo, "shadow", MODEL, "--stack", "staging", "--off")[0] == 0
    assert load_state(repo).stack("staging").config.releases[MODEL].shadow is None
    assert head_subject(repo) == "shadow: fraud-detection stops mirroring to v1.1.0 on staging"


def test_bluegreen_deploy_mirror_and_switch(repo: Path, cli: Cli) -> None:
    assert cli(repo, "bluegreen", MODEL, "v1.1.0", "--stack", "staging", "--mirror", "10")[0] == 0
    assert traffic(repo, "staging") == {"v1.0.0": 100, "v1.1.0": 0}
    assert cli(repo, "bluegreen", MODEL, "--stack", "staging", "--switch")[0] == 0
    assert traffic(repo, "staging") == {"v1.0.0": 0, "v1.1.0": 100}
    assert load_state(repo).stack("staging").config.releases[MODEL].shadow is None
    assert (
        head_subject(repo)
        == "bluegreen: fraud-detection switched to v1.1.0 100% on staging (v1.0.0 kept at 0% for rollback)"
    )


def test_prod_takes_a_version_that_soaked_on_staging(tmp_path: Path, cli: Cli) -> None:
    stacks = {
        "staging": stack_doc({"v1.0.0": 90, "v1.1.0": 10}),
        "prod": prod_doc({"v1.0.0": 100}),
    }
    repo = build_repo(tmp_path / "repo", stacks)
    assert cli(repo, "canary", MODEL, "v1.1.0", "--stack", "prod")[0] == 0
    assert traffic(repo, "prod") == {"v1.0.0": 95, "v1.1.0": 5}


def test_dry_run_prints_the_diff_and_changes_nothing(repo: Path, cli: Cli) -> None:
    before = git_picture(repo)
    code, out, _ = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging", "--dry-run")
    assert code == 0
    assert "-        v1.0.0: 100\n+        v1.0.0: 95\n+        v1.1.0: 5\n" in out
    assert git_picture(repo) == before


def test_no_commit_edits_the_file_only(repo: Path, cli: Cli) -> None:
    head = run_git(repo, "rev-parse", "HEAD")
    assert cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging", "--no-commit")[0] == 0
    assert run_git(repo, "rev-parse", "HEAD") == head
    assert run_git(repo, "status", "--porcelain") == " M Pulumi.staging.yaml\n"


def test_json_output(repo: Path, cli: Cli) -> None:
    code, out, _ = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["traffic"] == {"v1.0.0": 95, "v1.1.0": 5}
    assert data["commit"] == run_git(repo, "rev-parse", "HEAD").strip()


def test_other_staged_and_unstaged_work_is_left_alone(repo: Path, cli: Cli) -> None:
    (repo / "notes.txt").write_text("draft\n")
    run_git(repo, "add", "notes.txt")
    (repo / "Pulumi.prod.yaml").write_text((repo / "Pulumi.prod.yaml").read_text() + "# todo\n")
    cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    assert head_files(repo) == ["Pulumi.staging.yaml"]
    assert run_git(repo, "status", "--porcelain") == " M Pulumi.prod.yaml\nA  notes.txt\n"


# ---------------------------------------------------------------- refusals


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=root, capture_output=True)


def make_dirty(root: Path) -> None:
    path = root / "Pulumi.staging.yaml"
    path.write_text(path.read_text() + "# wip\n")


def detach(root: Path) -> None:
    git(root, "checkout", "-q", "--detach")


def start_conflicting_merge(root: Path) -> None:
    path = root / "Pulumi.prod.yaml"
    git(root, "checkout", "-q", "-b", "other")
    path.write_text(path.read_text().replace("models-prod", "models-other"))
    git(root, "commit", "-q", "-am", "other namespace")
    git(root, "checkout", "-q", "main")
    path.write_text(path.read_text().replace("models-prod", "models-main"))
    git(root, "commit", "-q", "-am", "main namespace")
    git(root, "merge", "-q", "other")


def leave_a_conflict(root: Path) -> None:
    """Unmerged paths with no merge in progress, as a conflicting 'git stash pop' leaves them."""
    path = root / "Pulumi.prod.yaml"
    original = path.read_text()
    path.write_text(original.replace("models-prod", "models-stashed"))
    git(root, "stash", "-q")
    path.write_text(original.replace("models-prod", "models-committed"))
    git(root, "commit", "-q", "-am", "committed namespace")
    git(root, "stash", "pop", "-q")


def failing_hook(root: Path) -> None:
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'policy says no' >&2\nexit 1\n")
    hook.chmod(0o755)


def staging_canary_now(root: Path) -> None:
    main(["-C", str(root), "canary", MODEL, "v1.2.0", "--stack", "staging"])


@dataclass(frozen=True)
class Refusal:
    name: str
    argv: list[str]
    expected: str
    setup: Callable[[Path], None] | None = None
    statuses: dict[str, str] = field(default_factory=dict)


REFUSALS = [
    Refusal(
        "unknown",
        ["canary", MODEL, "v9.9.9", "--stack", "staging"],
        "v9.9.9 of fraud-detection is not registered",
    ),
    Refusal(
        "revoked",
        ["canary", MODEL, "v1.1.0", "--stack", "staging"],
        "is revoked",
        statuses={"v1.1.0": "revoked"},
    ),
    Refusal(
        "deprecated",
        ["canary", MODEL, "v1.1.0", "--stack", "staging"],
        "deprecated and cannot gain traffic",
        statuses={"v1.1.0": "deprecated"},
    ),
    Refusal("weight-0", ["canary", MODEL, "v1.1.0", "--stack", "staging", "--weight", "0"], "outside 1-99"),
    Refusal(
        "weight-100", ["canary", MODEL, "v1.1.0", "--stack", "staging", "--weight", "100"], "outside 1-99"
    ),
    Refusal(
        "not-on-staging",
        ["canary", MODEL, "v1.1.0", "--stack", "prod"],
        "v1.1.0 of fraud-detection does not serve on staging",
    ),
    Refusal(
        "soak",
        ["canary", MODEL, "v1.2.0", "--stack", "prod"],
        "has served on staging for only 0m, and prod requires 24h",
        setup=staging_canary_now,
    ),
    Refusal(
        "dirty",
        ["canary", MODEL, "v1.1.0", "--stack", "staging"],
        "Pulumi.staging.yaml: has uncommitted changes",
        setup=make_dirty,
    ),
    Refusal("detached", ["canary", MODEL, "v1.1.0", "--stack", "staging"], "HEAD is detached", setup=detach),
    Refusal(
        "merging",
        ["canary", MODEL, "v1.1.0", "--stack", "staging"],
        "a git operation is in progress (MERGE_HEAD)",
        setup=start_conflicting_merge,
    ),
    Refusal(
        "conflict",
        ["canary", MODEL, "v1.1.0", "--stack", "staging"],
        "there are unresolved conflicts",
        setup=leave_a_conflict,
    ),
    Refusal(
        "hook",
        ["canary", MODEL, "v1.1.0", "--stack", "staging"],
        "git commit failed: policy says no",
        setup=failing_hook,
    ),
    Refusal("promote-nothing", ["promote", MODEL, "--stack", "staging"], "promote needs a canary"),
    Refusal(
        "rollback-to-unknown", ["rollback", MODEL, "--stack", "staging", "--to", "v9.0.0"], "not registered"
    ),
    Refusal("unknown-stack", ["canary", MODEL, "v1.1.0", "--stack", "qa"], "no stack named 'qa'"),
    Refusal(
        "bad-split", ["ab", MODEL, "--stack", "staging", "--split", "v1.0.0=70,v1.1.0=40"], "not an A/B split"
    ),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.name for r in REFUSALS])
def test_refusals_leave_git_and_the_tree_unchanged(
    tmp_path: Path, cli: Cli, capsys: pytest.CaptureFixture[str], refusal: Refusal
) -> None:
    repo = build_repo(tmp_path / "repo", statuses=refusal.statuses)
    if refusal.setup:
        refusal.setup(repo)
    capsys.readouterr()
    before = git_picture(repo)
    code, out, err = cli(repo, *refusal.argv)
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert refusal.expected in err
    assert git_picture(repo) == before


def test_gates_are_enforced_on_production(tmp_path: Path, cli: Cli) -> None:
    model = model_doc(versions=VERSIONS)
    model["versions"]["v1.1.0"]["metrics"]["auc_roc"] = 0.5
    write_repo(tmp_path / "repo", {MODEL: model}, {"prod": prod_doc({"v1.0.0": 100}, soak=False)})
    repo = tmp_path / "repo"
    before = git_picture(repo)
    code, _, err = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "prod")
    assert code == 1
    assert "fails the promotion gates (auc_roc 0.5 < 0.95) on a production stack" in err
    assert git_picture(repo) == before


def test_the_policies_run_on_the_new_state(tmp_path: Path, cli: Cli) -> None:
    unpinned = stack_doc({"v1.0.0": 100}, production=True)
    repo = write_repo(tmp_path / "repo", {MODEL: model_doc(versions=VERSIONS)}, {"prod": unpinned})
    before = git_picture(repo)
    code, _, err = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "prod")
    assert code == 1
    assert "policy pinned-images" in err
    assert git_picture(repo) == before


def test_a_rollback_target_that_was_revoked_is_refused(repo: Path, cli: Cli) -> None:
    stack = repo / "Pulumi.staging.yaml"
    yamlio.dump_file(stack, stack_doc({"v1.1.0": 100, "v1.0.0": 0}))
    run_git(repo, "commit", "-q", "-am", "staging on v1.1.0 by hand")
    model = repo / "models" / MODEL / "model.yaml"
    model.write_text(model.read_text().replace("status: active", "status: revoked", 1))
    run_git(repo, "commit", "-q", "-am", "revoke v1.0.0")
    before = git_picture(repo)
    code, _, err = cli(repo, "rollback", MODEL, "--stack", "staging")
    assert code == 1
    assert "v1.0.0 of fraud-detection is revoked" in err
    assert git_picture(repo) == before


# ---------------------------------------------------------------- reading


def test_status_shows_what_serves_where(repo: Path, cli: Cli) -> None:
    cli(repo, "shadow", MODEL, "v1.2.0", "--stack", "staging", "--percent", "5")
    code, out, _ = cli(repo, "status")
    assert code == 0
    assert out.splitlines() == [
        f"prod         {MODEL}          v1.0.0 100%",
        f"staging      {MODEL}          v1.0.0 100%; shadow v1.2.0 5%",
    ]


def test_history_lists_changes_and_answers_what_served_when(repo: Path, cli: Cli) -> None:
    redate_head(repo, "2026-01-01T00:00:00Z")
    stack = repo / "Pulumi.staging.yaml"
    for when, weights in [
        ("2026-03-01T10:00:00Z", {"v1.0.0": 90, "v1.1.0": 10}),
        ("2026-03-02T10:00:00Z", {"v1.1.0": 100}),
    ]:
        yamlio.dump_file(stack, stack_doc(weights))
        commit_at(repo, when, f"staging {weights}", "Pulumi.staging.yaml")
    code, out, _ = cli(repo, "history", MODEL, "--stack", "staging", "--json")
    assert code == 0
    assert [row["traffic"] for row in json.loads(out)] == [
        {"v1.1.0": 100},
        {"v1.0.0": 90, "v1.1.0": 10},
        {"v1.0.0": 100},
    ]
    _, out, _ = cli(repo, "history", MODEL, "--stack", "staging", "--at", "2026-03-01T23:00:00+02:00")
    assert out.startswith(
        "at 2026-03-01T23:00:00+02:00 fraud-detection on staging: v1.0.0 90%, v1.1.0 10%; canary v1.1.0 from "
        "v1.0.0 (commit "
    )
    _, out, _ = cli(repo, "history", MODEL, "--stack", "staging", "--at", "2026-03-02T10:00:00")
    assert "fraud-detection on staging: v1.1.0 100%" in out


def test_history_at_a_bad_timestamp_is_one_line(repo: Path, cli: Cli) -> None:
    code, _, err = cli(repo, "history", MODEL, "--stack", "staging", "--at", "yesterday")
    assert code == 1
    assert err == "error: --at: 'yesterday' is not a timestamp; write ISO 8601 like 2026-11-24T12:00:00Z\n"


def test_end_to_end_through_the_installed_entry_point(repo: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ok = subprocess.run(
        [sys.executable, "-m", "modelctl", "canary", MODEL, "v1.1.0", "--stack", "staging"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelctl",
            "canary",
            MODEL,
            "v1.1.0",
            "--stack",
            "staging",
            "--weight",
            "120",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: Pulumi.staging.yaml: ")
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    "command", ["canary", "promote", "ab", "shadow", "bluegreen", "rollback", "status", "history", "plan"]
)
def test_help_renders(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: modelctl {command}")
