from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelctl.cli import main
from modelctl.core.state import Folder
from tests.factories import default_docs, full_docs, write_repo

REPOSITORY = Path(__file__).resolve().parents[1]

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


@dataclass(frozen=True)
class RenderedStack:
    """The folder `modelctl render --stack <stack>` wrote for one stack of one repository."""

    label: str
    stack: str
    out: Path

    def objects(self) -> list[dict[str, Any]]:
        """Every Kubernetes object written, as parsed from its file."""
        return [yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(self.out.rglob("*.yaml"))]

    def file(self, name: str) -> Path:
        return self.out / name


@pytest.fixture(scope="session")
def rendered_stacks(tmp_path_factory: pytest.TempPathFactory) -> list[RenderedStack]:
    """Every stack of the committed repository and of the test repositories (defaults, and every
    feature), rendered by the real `modelctl render` command into a temporary folder."""
    base = tmp_path_factory.mktemp("rendered")
    roots = {"repository": REPOSITORY}
    for label, (models, stacks) in {"default": default_docs(), "full": full_docs()}.items():
        roots[label] = write_repo(base / "repos" / label, models, stacks, git=False)
    rendered = []
    for label, root in roots.items():
        for stack in Folder(root).stack_names():
            out = base / label / stack
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "modelctl",
                    "-C",
                    str(root),
                    "render",
                    "--stack",
                    stack,
                    "--out",
                    str(out),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            rendered.append(RenderedStack(label, stack, out))
    return rendered
