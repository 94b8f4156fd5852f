"""One writer at a time: real concurrent modelctl processes on one checkout (case 09)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelctl.core.state import parse_stack
from modelctl.repo.transaction import LOCK_TIMEOUT_ENV, repository_lock
from tests.factories import run_git, write_repo

PROJECT = Path(__file__).resolve().parents[1]
MODEL = "fraud-detection"
ROUNDS = 6
WEIGHTS = (20, 30, 40)
BUSY = "another modelctl command is changing this repository"


def start(root: Path, *args: str, timeout: str = "60") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), LOCK_TIMEOUT_ENV: timeout}
    return subprocess.Popen(
        [sys.executable, "-m", "modelctl", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def canary_weight(root: Path, commit: str) -> int:
    stack = parse_stack(run_git(root, "show", f"{commit}:Pulumi.staging.yaml"), "staging")
    return stack.config.releases[MODEL].traffic["v1.1.0"]


def picture(root: Path) -> tuple[str, str, bytes]:
    return (
        run_git(root, "log", "--all", "--format=%H"),
        run_git(root, "status", "--porcelain", "--untracked-files=all"),
        (root / "Pulumi.staging.yaml").read_bytes(),
    )


def test_concurrent_release_commands_commit_exactly_what_they_say(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo")
    base = run_git(root, "rev-parse", "HEAD").strip()
    for attempt in range(ROUNDS):
        run_git(root, "reset", "-q", "--hard", base)
        processes = [
            start(root, "canary", MODEL, "v1.1.0", "--weight", str(w), "--stack", "staging") for w in WEIGHTS
        ]
        results = [finish(p) for p in processes]
        for code, out, err in results:
            assert code == 0, (attempt, err)
            said = re.search(r"committed ([0-9a-f]{12}): canary: .* at (\d+)% on staging", out)
            assert said, out
            assert canary_weight(root, said[1]) == int(said[2])
        made = run_git(root, "rev-list", f"{base}..HEAD").split()
        assert len(made) == len(WEIGHTS)
        for commit in made:
            subject = run_git(root, "log", "-1", "--format=%s", commit)
            assert f" at {canary_weight(root, commit)}% on staging" in subject, (attempt, subject)
        assert run_git(root, "status", "--porcelain") == ""


@pytest.mark.parametrize(
    "command",
    [
        ["canary", MODEL, "v1.1.0", "--stack", "staging"],
        ["rollback", MODEL, "--stack", "staging"],
        ["deprecate", MODEL, "v1.0.0"],
        ["revoke", MODEL, "v1.1.0"],
    ],
    ids=lambda c: c[0],
)
def test_a_second_writer_waits_a_bounded_time_then_refuses_writing_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    root = write_repo(tmp_path / "repo")
    if command[0] == "revoke":
        stack = root / "Pulumi.staging.yaml"
        stack.write_text(stack.read_text().replace("v1.0.0: 90\n        v1.1.0: 10\n", "v1.0.0: 100\n"))
        (root / "Pulumi.dev.yaml").write_text(
            (root / "Pulumi.dev.yaml").read_text().replace("v1.1.0", "v1.0.0")
        )
        run_git(root, "commit", "-q", "-am", "v1.1.0 served nowhere")
    before = picture(root)
    with repository_lock(root):
        began = time.monotonic()
        code, out, err = finish(start(root, *command, "--lock-timeout", "1"))
        waited = time.monotonic() - began
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert BUSY in err
    assert "lock .git/modelctl.lock held for over 1s" in err
    assert waited >= 1
    assert picture(root) == before
    # Free again: the same command goes through.
    assert finish(start(root, *command))[0] == 0


def test_a_waiting_writer_goes_ahead_when_the_lock_is_released(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo")
    with repository_lock(root):
        waiting = start(root, "canary", MODEL, "v1.1.0", "--stack", "staging", timeout="60")
        time.sleep(1)
        assert waiting.poll() is None
    code, out, err = finish(waiting)
    assert code == 0, err
    assert "at 25% on staging" in out


def test_the_timeout_comes_from_the_environment_and_a_bad_value_is_one_line(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo")
    before = picture(root)
    with repository_lock(root):
        code, _, err = finish(start(root, "canary", MODEL, "v1.1.0", "--stack", "staging", timeout="0"))
    assert code == 1
    assert "held for over 0s" in err
    code, _, err = finish(start(root, "canary", MODEL, "v1.1.0", "--stack", "staging", timeout="soon"))
    assert code == 1
    assert err == f"error: {LOCK_TIMEOUT_ENV}: 'soon' is not a number of seconds; set it to e.g. 30\n"
    assert picture(root) == before


def test_a_failed_commit_never_undoes_another_writers_change(tmp_path: Path) -> None:
    """A hook that edits the stack file, then fails: the failing command restores nothing it did not write."""
    root = write_repo(tmp_path / "repo")
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho '# written by someone else' >> Pulumi.staging.yaml\nexit 1\n")
    hook.chmod(0o755)
    code, _, err = finish(start(root, "canary", MODEL, "v1.1.0", "--stack", "staging"))
    assert code == 1
    assert "git commit failed" in err
    assert (root / "Pulumi.staging.yaml").read_text().endswith("# written by someone else\n")
    assert run_git(root, "diff", "--cached") == ""
