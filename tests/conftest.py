from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.factories import write_repo


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
