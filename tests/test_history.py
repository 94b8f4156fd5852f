"""Stack states read back from git: dates, authors, merges, unusable old commits."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelctl.core import yamlio
from modelctl.repo import gitutil
from modelctl.repo.history import release_changes, snapshot_at, stack_history
from tests.factories import commit_at, redate_head, run_git, stack_doc, write_repo

MODEL = "fraud-detection"


def commit_stack(root: Path, when: str, doc: dict[str, Any], message: str = "edit staging") -> None:
    yamlio.dump_file(root / "Pulumi.staging.yaml", doc)
    commit_at(root, when, message, "Pulumi.staging.yaml")


def traffic_of(snapshot: Any) -> dict[str, int] | None:
    release = snapshot.release(MODEL)
    return dict(release.traffic) if release else None


@pytest.fixture
def repo(repo: Path) -> Path:
    """The test repository, its initial commit dated before every date these tests commit at."""
    redate_head(repo, "2026-01-01T00:00:00Z")
    return repo


def test_history_reads_each_commit_with_its_committer_date(repo: Path) -> None:
    commit_stack(repo, "2026-03-01T10:00:00Z", stack_doc({"v1.0.0": 80, "v1.1.0": 20}), "canary")
    commit_stack(repo, "2026-03-02T10:00:00+01:00", stack_doc({"v1.1.0": 100}), "promote")
    snapshots = stack_history(repo, "staging")
    assert [s.subject for s in snapshots] == ["promote", "canary", "initial state"]
    assert snapshots[0].date == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert snapshots[0].author == "Test <test@example.com>"
    assert traffic_of(snapshots[1]) == {"v1.0.0": 80, "v1.1.0": 20}


def test_only_commits_that_change_the_model_release_are_changes(repo: Path) -> None:
    commit_stack(repo, "2026-03-01T10:00:00Z", stack_doc({"v1.0.0": 100}), "to v1.0.0")
    commit_stack(repo, "2026-03-01T11:00:00Z", stack_doc({"v1.0.0": 100}, namespace="other"), "namespace")
    commit_stack(repo, "2026-03-01T12:00:00Z", stack_doc({"v1.0.0": 100}, model="other"), "model gone")
    changes = release_changes(stack_history(repo, "staging"), MODEL)
    assert [s.subject for s in changes] == ["model gone", "to v1.0.0", "initial state"]
    assert traffic_of(changes[0]) is None


def test_the_state_at_a_time_is_the_newest_commit_not_after_it(repo: Path) -> None:
    commit_stack(repo, "2030-03-01T10:00:00Z", stack_doc({"v1.0.0": 100}), "march")
    commit_stack(repo, "2030-04-01T10:00:00Z", stack_doc({"v1.1.0": 100}), "april")
    snapshots = stack_history(repo, "staging")
    at = snapshot_at(snapshots, datetime(2030, 3, 31, tzinfo=UTC))
    assert at is not None
    assert at.subject == "march"
    exactly = snapshot_at(snapshots, datetime(2030, 4, 1, 10, tzinfo=UTC))
    assert exactly is not None
    assert exactly.subject == "april"
    assert snapshot_at(snapshots, datetime(2000, 1, 1, tzinfo=UTC)) is None


def test_a_commit_that_does_not_validate_offers_no_state(repo: Path) -> None:
    (repo / "Pulumi.staging.yaml").write_text("config:\n  modelctl:environment: [broken\n")
    commit_at(repo, "2026-03-01T10:00:00Z", "broken", "Pulumi.staging.yaml")
    latest = stack_history(repo, "staging")[0]
    assert latest.subject == "broken"
    assert latest.release(MODEL) is None


def test_merged_branches_count_from_the_merge(tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    run_git(repo, "checkout", "-q", "-b", "feature")
    commit_stack(repo, "2026-03-01T10:00:00Z", stack_doc({"v1.1.0": 100}), "on a branch")
    run_git(repo, "checkout", "-q", "main")
    (repo / "README.md").write_text("unrelated\n")
    commit_at(repo, "2026-03-05T10:00:00Z", "readme", "README.md")
    run_git(repo, "merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    latest = stack_history(repo, "staging")[0]
    assert latest.subject == "merge feature"
    assert latest.date > datetime(2026, 3, 5, 10, tzinfo=UTC)
    assert traffic_of(latest) == {"v1.1.0": 100}


def test_a_history_read_again_reads_no_version_of_the_file_and_says_the_same(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = ({"v1.0.0": 80, "v1.1.0": 20}, {"v1.0.0": 50, "v1.1.0": 50}, {"v1.1.0": 100})
    for day, traffic in enumerate(steps):
        commit_stack(repo, f"2026-03-0{day + 1}T10:00:00Z", stack_doc(traffic), f"step {day}")
    # A model's changes are read from the oldest version on: that walk fills the cache.
    first = [traffic_of(s) for s in release_changes(stack_history(repo, "staging"), MODEL)]
    assert first[:3] == list(reversed(steps))
    cache = repo / ".git" / "modelctl" / "history" / "Pulumi.staging.yaml.json"
    assert cache.is_file()
    with monkeypatch.context() as no_git:
        no_git.setattr(gitutil, "stream", lambda *_: pytest.fail("read a version"))
        no_git.setattr(gitutil.Objects, "text", lambda *_: pytest.fail("read a version"))
        assert [traffic_of(s) for s in release_changes(stack_history(repo, "staging"), MODEL)] == first
    # One more commit: only its version is read, the walk going on from the cached ones.
    commit_stack(repo, "2026-03-09T10:00:00Z", stack_doc({"v1.0.0": 100}), "back")
    streamed: list[str] = []
    real_stream = gitutil.stream

    def stream(root: Path, names: Sequence[str]) -> Iterator[str | None]:
        streamed.extend(names)
        return real_stream(root, names)

    with monkeypatch.context() as spy:
        spy.setattr(gitutil, "stream", stream)
        after = [traffic_of(s) for s in release_changes(stack_history(repo, "staging"), MODEL)]
    assert after == [{"v1.0.0": 100}, *first]
    assert len(streamed) == 1
    cache.write_text("not json")
    assert [traffic_of(s) for s in release_changes(stack_history(repo, "staging"), MODEL)] == after


def test_a_commit_dated_before_the_commit_before_it_took_effect_no_earlier(repo: Path) -> None:
    """A clock behind where it was committed (case 13): the history reads the commit as made no
    earlier than its parent, whatever its date says (kept as `committed`)."""
    commit_stack(repo, "2026-03-05T10:00:00Z", stack_doc({"v1.0.0": 100}), "rollback")
    (repo / "README.md").write_text("unrelated\n")
    commit_at(repo, "2026-03-06T10:00:00Z", "readme", "README.md")
    commit_stack(
        repo, "2026-03-04T10:00:00Z", stack_doc({"v1.0.0": 90, "v1.1.0": 10}), "canary, clock behind"
    )
    latest = stack_history(repo, "staging")[0]
    assert latest.subject == "canary, clock behind"
    assert latest.date == datetime(2026, 3, 6, 10, tzinfo=UTC)
    assert latest.committed == datetime(2026, 3, 4, 10, tzinfo=UTC)
