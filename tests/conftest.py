from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from modelctl.cli import main
from modelctl.core.state import Folder
from serving.options import Settings
from tests.factories import default_docs, full_docs, write_repo

REPOSITORY = Path(__file__).resolve().parents[1]
T = TypeVar("T")

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


@dataclass(frozen=True)
class FeedbackStore:
    """A real Redis (Debian's redis-server, as `modelctl up` runs it) and the Secret's files."""

    url: str
    secret: Path
    port: int

    def settings(self, **fields: Any) -> Settings:
        """Server settings that take labels through this store, and `fields`."""
        return Settings(**{"feedback_store": self.url, "feedback_secret": str(self.secret), **fields})

    def flags(self) -> list[str]:
        return ["--feedback-store", self.url, "--feedback-secret", str(self.secret)]


@pytest.fixture(scope="session")
def feedback_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedbackStore]:
    """One store per test process, started as the local stack starts it and stopped by its pid."""
    from onebox import feedback, processes

    run = tmp_path_factory.mktemp("feedback")
    port = processes.free_port()
    proc = feedback.store_proc(run, port, str(run / "store.log"))
    processes.start(proc, dict(os.environ), run)
    try:
        processes.wait_until_healthy(proc, 30)
        yield FeedbackStore(feedback.store_url(port), feedback.secret_folder(run), port)
    finally:
        processes.stop(proc)


def run_fresh(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on a loop of its own, leaving the thread's event loop as it was
    (`asyncio.run` unsets it, and later tests in the process, Pulumi's, need one)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()
