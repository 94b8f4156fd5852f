"""On a repository of many models and commits, every command prints and exits as it did when
everything was read whole with the round trip.

The repository is this one grown by `bench.scale.grow` (30 models, 300 commits of canary steps).
Each command runs twice in this process: as it runs, and with every shortcut of issue 24 turned
off, which is how modelctl read before (the round-trip reader for every file, the whole state
for every command, every stack file parsed whole at every commit, the whole document
round-tripped for a release edit, every model rendered by plan).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

import modelctl.cli.plan
import modelctl.repo.state
from bench.scale.grow import grow
from modelctl.cli import main
from modelctl.core import state as core_state
from modelctl.core import yamlio
from modelctl.repo import history

ROOT = Path(__file__).resolve().parents[1]
# Commit hashes and times differ between two runs of a committing command; nothing else may.
_RUN_SPECIFIC = re.compile(
    r"\b[0-9a-f]{12}(?:[0-9a-f]{28})?\b|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)"
)


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("needs this repository's git history to grow a clone of it")
    return grow(ROOT, tmp_path_factory.mktemp("scale") / "repo", models=30, commits=300)


@contextmanager
def as_before(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every shortcut off: what modelctl did before it read only what a command needs."""
    load_state = core_state.load_state

    def unsure(_: str) -> None:
        raise yamlio.Unsure("turned off")

    with monkeypatch.context() as patch:
        patch.setattr(yamlio, "read", unsure)
        patch.setattr(yamlio, "block_span", lambda *_: None)
        patch.setattr(history._Cut, "after", lambda *_: None)
        patch.setattr(history._Changelog, "known", lambda *_: 0)
        patch.setattr(history._Changelog, "save", lambda *_: None)
        patch.setattr(modelctl.repo.state, "load_state", lambda source, *_: load_state(source))
        patch.setattr(modelctl.cli.plan, "_changed_models", lambda *_: None)
        patch.setattr(modelctl.repo.state.CheckedFiles, "of", lambda *_: None)
        yield


def run(repo: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["-C", str(repo), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def both(
    repo: Path,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    before: Callable[[], AbstractContextManager[None]],
    reset: str | None = None,
) -> tuple[int, str, str]:
    """The command's (exit code, stdout, stderr) now, asserted equal to what it was before."""
    if reset:
        subprocess.run(["git", "reset", "-q", "--hard", reset], cwd=repo, check=True)
    now = run(repo, argv, capsys)
    changed = _stack_files(repo)
    if reset:
        subprocess.run(["git", "reset", "-q", "--hard", reset], cwd=repo, check=True)
    with before():
        then = run(repo, argv, capsys)
    if reset:
        assert _stack_files(repo) == changed, argv
        now, then = (
            (code, _RUN_SPECIFIC.sub("#", out), _RUN_SPECIFIC.sub("#", err)) for code, out, err in (now, then)
        )
        subprocess.run(["git", "reset", "-q", "--hard", reset], cwd=repo, check=True)
    assert now == then, argv
    return now


def _stack_files(repo: Path) -> list[str]:
    return [_RUN_SPECIFIC.sub("#", path.read_text()) for path in sorted(repo.glob("Pulumi.*.yaml"))]


READING = [
    ["status"],
    ["--json", "status", "--stack", "prod"],
    ["models", "show", "fraud-detection"],
    ["--json", "models", "show", "model-0003"],
    ["history", "fraud-detection", "--stack", "staging"],
    ["history", "model-0007", "--stack", "prod", "--json"],
    ["history", "model-0011", "--stack", "staging", "--at", "2030-01-01T00:00:00Z"],
    ["check"],
    ["--json", "check", "--stack", "dev"],
    ["plan", "--base", "HEAD~1"],
    ["--json", "plan", "--base", "HEAD~40"],
    ["canary", "fraud-detectoin", "v1.1.0", "--stack", "staging"],
    ["history", "fraud-detection", "--stack", "stagin"],
]
RELEASES = [
    ["canary", "fraud-detection", "v1.1.0", "--stack", "staging"],
    ["promote", "fraud-detection", "--stack", "staging"],
    ["rollback", "fraud-detection", "--stack", "staging", "--reason", "INC-1"],
    ["canary", "fraud-detection", "v1.1.0", "--stack", "prod"],
    ["--json", "canary", "model-0002", "v1.1.0", "--stack", "dev", "--weight", "30"],
    [
        "ab",
        "model-0005",
        "--split",
        "v1.0.0=50,v1.1.0=50",
        "--metric",
        "accuracy",
        "--effect",
        "0.02",
        "--stack",
        "staging",
        "--dry-run",
    ],
    ["shadow", "model-0006", "v1.1.0", "--percent", "20", "--stack", "dev"],
    ["release-hold", "clear", "fraud-detection", "v1.1.0", "--stack", "staging", "--reason", "fixed"],
    ["bluegreen", "churn", "v1.0.0", "--stack", "prod"],
]


def test_reading_commands_print_what_they_did_before(
    grown: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = [both(grown, argv, capsys, lambda: as_before(monkeypatch))[0] for argv in READING]
    assert codes == [0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 1, 1]


def test_render_writes_what_it_did_before(
    grown: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rendered"
    both(grown, ["render", "--stack", "prod", "--out", str(out)], capsys, lambda: as_before(monkeypatch))
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with as_before(monkeypatch):
        run(grown, ["render", "--stack", "prod", "--out", str(tmp_path / "before")], capsys)
    assert {p.relative_to(out): b for p, b in files.items()} == {
        p.relative_to(tmp_path / "before"): p.read_bytes()
        for p in (tmp_path / "before").rglob("*")
        if p.is_file()
    }


def test_release_commands_write_and_print_what_they_did_before(
    grown: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=grown, capture_output=True, text=True, check=True)
    codes = [
        both(grown, argv, capsys, lambda: as_before(monkeypatch), reset=head.stdout.strip())[0]
        for argv in RELEASES
    ]
    assert codes == [0, 0, 0, 0, 0, 0, 0, 0, 1]
