"""`modelctl up/down/ps/traffic` without running anything: which stack is local, and one-line errors."""

from __future__ import annotations

from pathlib import Path

from modelctl.cli.local import local_stack
from modelctl.core.state import load_state
from tests.conftest import Cli
from tests.factories import default_docs, write_repo


def test_the_local_stack_is_the_one_marked_local_else_dev(tmp_path: Path) -> None:
    assert local_stack(load_state(write_repo(tmp_path / "plain", git=False)), None) == "dev"
    models, stacks = default_docs()
    stacks["staging"]["config"]["modelctl:environment"]["local"] = True
    marked = load_state(write_repo(tmp_path / "marked", models, stacks, git=False))
    assert local_stack(marked, None) == "staging"
    assert local_stack(marked, "prod") == "prod"


def test_commands_on_a_stack_that_is_not_up_say_so_in_one_line(repo: Path, cli: Cli) -> None:
    code, out, err = cli(repo, "traffic", "--stack", "staging", "--requests", "10")
    assert code == 1
    assert err.strip().splitlines() == [
        "error: stack staging: is not running on this machine; run 'modelctl up --stack staging' first"
    ]
    code, out, _ = cli(repo, "ps", "--stack", "staging")
    assert (code, out.strip()) == (0, "stack staging is not up")
    code, out, _ = cli(repo, "down", "--stack", "staging")
    assert (code, out.strip()) == (0, "nothing of stack staging was running")
    assert not (repo / ".modelctl").exists() or not any((repo / ".modelctl").rglob("state.json"))


def test_a_first_up_that_fails_leaves_nothing_running(repo: Path, cli: Cli) -> None:
    # The factory's artifacts are in no remote: the mail sink starts, then the first fetch fails.
    code, _, err = cli(repo, "up", "--stack", "staging", "--remote", str(repo / "empty-remote"))
    assert code == 1
    assert "object not found" in err, err
    assert not any((repo / ".modelctl").rglob("state.json"))
    assert cli(repo, "ps", "--stack", "staging")[1].strip() == "stack staging is not up"


def test_down_and_ps_refuse_a_mistyped_stack(repo: Path, cli: Cli) -> None:
    for command in ("down", "ps"):
        code, out, err = cli(repo, command, "--stack", "stagin")
        assert (code, out) == (1, "")
        assert "no stack named 'stagin'; did you mean 'staging'?" in err
