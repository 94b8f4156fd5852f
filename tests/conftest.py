from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from modelctl.cli import main
from tests.factories import write_repo

# Runs the CLI in-process on a repository: (exit code, stdout, stderr).
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits made by the code under test need an author, whatever the machine's git config."""
    for key, value in {
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }.items():
        monkeypatch.setenv(key, os.environ.get(key, value))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed repository holding a valid desired state (tests/factories.py defaults)."""
    return write_repo(tmp_path / "repo")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(root: Path, *args: str) -> tuple[int, str, str]:
        code = main(["-C", str(root), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
