"""What a stack file said at each commit, read from git alone.

History follows the first parent, so a state counts from the moment it landed on the branch
(a merge commit's date), and times are committer dates: when the change was committed or
merged, not when it was first written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from modelctl.core.errors import UserError, UserErrors
from modelctl.core.schema import Release
from modelctl.core.state import Stack, parse_stack, stack_file
from modelctl.repo import gitutil
from modelctl.repo.state import Revision

_FIELD, _RECORD = "\x1f", "\x1e"


@dataclass(frozen=True)
class Snapshot:
    """One commit that changed a stack file, and the stack as it stood after it."""

    commit: str
    author: str
    date: datetime
    subject: str
    # None where the file was deleted or does not validate at that commit.
    stack: Stack | None

    def release(self, model: str) -> Release | None:
        return self.stack.config.releases.get(model) if self.stack else None


def stack_history(root: Path, stack: str, rev: str = "HEAD") -> list[Snapshot]:
    """Every commit reachable from `rev` (first parents) that touched the stack file, newest first."""
    path = stack_file(stack)
    out = gitutil.git(
        root,
        "log",
        "--first-parent",
        f"--format=%H{_FIELD}%an <%ae>{_FIELD}%cI{_FIELD}%s{_RECORD}",
        rev,
        "--",
        path,
    )
    snapshots = []
    for record in out.split(_RECORD):
        if not record.strip():
            continue
        commit, author, date, subject = record.strip("\n").split(_FIELD)
        snapshots.append(
            Snapshot(commit, author, datetime.fromisoformat(date), subject, _stack_at(root, commit, stack))
        )
    return snapshots


def _stack_at(root: Path, commit: str, stack: str) -> Stack | None:
    text = Revision(root, commit).read(stack_file(stack))
    if text is None:
        return None
    try:
        return parse_stack(text, stack)
    except (UserError, UserErrors):
        # An old commit may predate today's schema; it simply offers no usable state.
        return None


def release_changes(snapshots: Sequence[Snapshot], model: str) -> list[Snapshot]:
    """The snapshots (newest first) where the model's release differs from the one before it."""
    changes = []
    previous: Release | None = None
    for snapshot in reversed(snapshots):
        release = snapshot.release(model)
        if release != previous:
            changes.append(snapshot)
        previous = release
    return list(reversed(changes))


def snapshot_at(snapshots: Sequence[Snapshot], when: datetime) -> Snapshot | None:
    """The snapshot in force at `when`: the newest committed at or before it."""
    return next((s for s in snapshots if s.date <= when), None)


def releases_by_date(snapshots: Sequence[Snapshot], model: str) -> list[tuple[datetime, Release | None]]:
    return [(s.date, s.release(model)) for s in snapshots]
