"""Rollback from the state alone, holds on versions rolled back from, and hints that work.

The cases run on a repository holding this project's own committed stack and model files as
its only commit: staging's first (and only) state is already the 90/10 canary.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelctl import api
from modelctl.core.errors import UserError
from modelctl.core.state import load_state
from modelctl.core.trusted import ALLOW_LIST_FILE
from tests.conftest import Cli
from tests.factories import commit_at, model_doc, run_git, stack_doc, write_repo

PROJECT = Path(__file__).resolve().parents[1]
MODEL = "fraud-detection"


def no_policies(*_: object) -> None:
    """The policies are not what these tests are about; test_releases_cli runs the real ones."""


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """The project's committed desired state as the first commit of a fresh repository, two days old."""
    root = tmp_path / "repo"
    files = [
        "Pulumi.yaml",
        ALLOW_LIST_FILE,
        *run_git(PROJECT, "ls-files", "Pulumi.*.yaml", "models/*/model.yaml").split(),
    ]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(run_git(PROJECT, "show", f"HEAD:{name}"))
    run_git(root, "init", "-q", "-b", "main")
    commit_at(root, (datetime.now(UTC) - timedelta(days=2)).isoformat(), "shipped state", ".")
    return root


def traffic(root: Path, stack: str) -> dict[str, int]:
    return dict(load_state(root).stack(stack).config.releases[MODEL].traffic)


def commits(root: Path) -> int:
    return len(run_git(root, "log", "--format=%H").split())


def follow(cli: Cli, root: Path, error: str, after: str) -> tuple[int, str, str]:
    """Run the command an error's hint names (the text after `after`), as a user would paste it."""
    argv = shlex.split(error.split(after, 1)[1].strip())
    assert argv[0] == "modelctl", error
    return cli(root, *argv[1:])


def test_case_07_a_second_rollback_is_a_no_op_and_never_re_promotes(shipped: Path, cli: Cli) -> None:
    for command in (["canary", MODEL, "v1.1.0"], ["promote", MODEL], ["rollback", MODEL]):
        code, out, err = cli(shipped, *command, "--stack", "prod")
        assert code == 0, err
    assert traffic(shipped, "prod") == {"v1.0.0": 100}
    made = commits(shipped)
    code, out, err = cli(shipped, "rollback", MODEL, "--stack", "prod")
    assert (code, err) == (0, "")
    assert (
        out
        == "no change: rollback: fraud-detection is already fully on v1.0.0 on prod; v1.1.0 held; nothing to roll back\n"
    )
    assert commits(shipped) == made
    assert traffic(shipped, "prod") == {"v1.0.0": 100}
    assert run_git(shipped, "status", "--porcelain") == ""


def test_case_08_rollback_after_promote_of_a_canary_git_never_saw_start(shipped: Path, cli: Cli) -> None:
    assert cli(shipped, "promote", MODEL, "--stack", "staging")[0] == 0
    assert traffic(shipped, "staging") == {"v1.0.0": 0, "v1.1.0": 100}
    code, _, err = cli(shipped, "rollback", MODEL, "--stack", "staging")
    assert code == 0, err
    assert traffic(shipped, "staging") == {"v1.0.0": 100}
    code, out, _ = cli(shipped, "rollback", MODEL, "--stack", "staging", "--to", "v1.0.0")
    assert code == 0
    assert out.startswith("no change: ")
    code, out, _ = cli(shipped, "history", MODEL, "--stack", "staging")
    assert code == 0
    assert out.splitlines()[0].split("  ")[3] == "v1.0.0 100%; held: v1.1.0"


def test_a_stack_file_without_rollback_to_still_rolls_back(tmp_path: Path, cli: Cli) -> None:
    """Files written before rollback_to existed: a canary, and a promote's old version at 0%."""
    stacks = {
        "staging": stack_doc({"v1.0.0": 90, "v1.1.0": 10}),
        "dev": stack_doc({"v1.0.0": 0, "v1.1.0": 100}),
    }
    repo = write_repo(tmp_path / "repo", stacks=stacks)
    for stack in ("staging", "dev"):
        assert cli(repo, "rollback", MODEL, "--stack", stack)[0] == 0
        assert traffic(repo, stack) == {"v1.0.0": 100}


START = {
    "canary": [["canary", MODEL, "v1.1.0"], ["canary", MODEL, "v1.1.0"]],
    "canary-promoted": [["canary", MODEL, "v1.1.0"], ["promote", MODEL]],
    "ab": [
        [
            "ab",
            MODEL,
            "--split",
            "v1.0.0=50,v1.1.0=50",
            "--sticky",
            "--metric",
            "accuracy",
            "--effect",
            "0.02",
        ]
    ],
    "ab-without-stable": [
        ["ab", MODEL, "--split", "v1.1.0=50,v1.2.0=50", "--metric", "recall", "--effect", "0.05"]
    ],
    "shadow": [["shadow", MODEL, "v1.1.0", "--percent", "20"]],
    "bluegreen": [["bluegreen", MODEL, "v1.1.0", "--mirror", "10"]],
    "bluegreen-switched": [["bluegreen", MODEL, "v1.1.0"], ["bluegreen", MODEL, "--switch"]],
}
# What may not take traffic afterwards, one command each.
RETRIES = [
    ["canary", MODEL, "v1.1.0"],
    ["ab", MODEL, "--split", "v1.0.0=50,v1.1.0=50"],
    ["shadow", MODEL, "v1.1.0", "--percent", "5"],
    ["bluegreen", MODEL, "v1.1.0"],
]


@pytest.mark.parametrize("kind", list(START))
def test_every_kind_of_release_rolls_back_to_its_stable_version_and_holds(
    tmp_path: Path, cli: Cli, kind: str
) -> None:
    models = {MODEL: model_doc(versions=("v1.0.0", "v1.1.0", "v1.2.0"))}
    repo = write_repo(tmp_path / "repo", models, {"staging": stack_doc({"v1.0.0": 100})})
    for command in START[kind]:
        assert cli(repo, *command, "--stack", "staging")[0] == 0
    assert cli(repo, "rollback", MODEL, "--stack", "staging")[0] == 0
    release = load_state(repo).stack("staging").config.releases[MODEL]
    assert (dict(release.traffic), release.shadow, release.sticky) == ({"v1.0.0": 100}, None, None)
    assert "v1.1.0" in release.held
    made = commits(repo)
    assert cli(repo, "rollback", MODEL, "--stack", "staging")[1].startswith("no change: ")
    for retry in RETRIES:
        code, out, err = cli(repo, *retry, "--stack", "staging")
        assert (code, out) == (1, "")
        assert "v1.1.0 of fraud-detection is held on staging" in err
    assert commits(repo) == made
    assert run_git(repo, "status", "--porcelain") == ""


def test_automation_through_the_api_is_refused_a_held_version(tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    api.rollback(repo, MODEL, stack="staging", policies=no_policies)
    calls: list[Callable[[], object]] = [
        lambda: api.canary(repo, MODEL, "v1.1.0", stack="staging", policies=no_policies),
        lambda: api.canary(repo, MODEL, "v1.1.0", stack="staging", weight=50, policies=no_policies),
        lambda: api.ab(repo, MODEL, stack="staging", split={"v1.0.0": 1, "v1.1.0": 99}, policies=no_policies),
    ]
    for call in calls:
        with pytest.raises(UserError, match="is held on staging"):
            call()


def test_a_hand_edit_giving_a_held_version_traffic_fails_check(tmp_path: Path, cli: Cli) -> None:
    repo = write_repo(tmp_path / "repo")
    assert cli(repo, "rollback", MODEL, "--stack", "staging")[0] == 0
    path = repo / "Pulumi.staging.yaml"
    path.write_text(
        path.read_text().replace("        v1.0.0: 100\n", "        v1.0.0: 90\n        v1.1.0: 10\n")
    )
    code, _, err = cli(repo, "check")
    assert code == 1
    assert "v1.1.0 is held (rolled back to v1.0.0) and may not take traffic at traffic.v1.1.0" in err


def test_the_held_hint_works_when_followed(tmp_path: Path, cli: Cli) -> None:
    repo = write_repo(tmp_path / "repo")
    cli(repo, "rollback", MODEL, "--stack", "staging")
    code, _, err = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")
    assert code == 1
    code, out, _ = follow(cli, repo, err, "clear the hold in a reviewed commit:")
    assert code == 0, out
    assert run_git(repo, "log", "-1", "--format=%s").strip() == (
        "release-hold: fraud-detection v1.1.0 may take traffic on staging again (why it is fit again)"
    )
    assert cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")[0] == 0
    assert traffic(repo, "staging") == {"v1.0.0": 95, "v1.1.0": 5}


@pytest.mark.parametrize(
    ("weights", "revoked"),
    [
        ({"v1.0.0": 90, "v1.1.0": 10}, "v1.1.0"),
        ({"v1.0.0": 90, "v1.1.0": 10}, "v1.0.0"),
        ({"v1.0.0": 0, "v1.1.0": 100}, "v1.0.0"),
        ({"v1.0.0": 0, "v1.1.0": 100}, "v1.1.0"),
        ({"v1.0.0": 100}, "v1.0.0"),
    ],
)
def test_the_revoke_hint_works_when_followed(
    tmp_path: Path, cli: Cli, weights: dict[str, int], revoked: str
) -> None:
    models = {MODEL: model_doc(versions=("v1.0.0", "v1.1.0", "v1.2.0"))}
    stack = stack_doc(weights)
    if len(weights) > 1:
        stack["config"]["modelctl:releases"][MODEL]["rollback_to"] = "v1.0.0"
    repo = write_repo(tmp_path / "repo", models, {"staging": stack})
    code, _, err = cli(repo, "revoke", MODEL, revoked)
    assert code == 1
    code, _, err2 = follow(cli, repo, err, "move its traffic first:")
    assert code == 0, err2
    assert cli(repo, "revoke", MODEL, revoked)[0] == 0
    assert revoked not in traffic(repo, "staging")


def test_a_squashed_history_changes_nothing(shipped: Path, cli: Cli) -> None:
    cli(shipped, "canary", MODEL, "v1.1.0", "--stack", "staging")
    cli(shipped, "promote", MODEL, "--stack", "staging")
    run_git(shipped, "checkout", "-q", "--orphan", "squashed")
    run_git(shipped, "commit", "-q", "-m", "squashed")
    assert commits(shipped) == 1
    assert cli(shipped, "rollback", MODEL, "--stack", "staging")[0] == 0
    assert traffic(shipped, "staging") == {"v1.0.0": 100}
