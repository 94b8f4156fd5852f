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
class StackChange:
    """One commit that changed a stack file, and the stack as it stood after it."""

    commit: str
    author: str
    date: datetime
    subject: str
    # None where the file was deleted or does not validate at that commit.
    stack: Stack | None

    def release(self, model: str) -> Release | None:
        return self.stack.config.releases.get(model) if self.stack else None


def stack_history(root: Path, stack: str, rev: str = "HEAD") -> list[StackChange]:
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
    history = []
    for record in out.split(_RECORD):
        if not record.strip():
            continue
        commit, author, date, subject = record.strip("\n").split(_FIELD)
        history.append(
            StackChange(commit, author, datetime.fromisoformat(date), subject, _stack_at(root, commit, stack))
        )
    return history


def _stack_at(root: Path, commit: str, stack: str) -> Stack | None:
    text = Revision(root, commit).read(stack_file(stack))
    if text is None:
        return None
    try:
        return parse_stack(text, stack)
    except (UserError, UserErrors):
        # An old commit may predate today's schema; it simply offers no usable state.
        return None


def release_changes(history: Sequence[StackChange], model: str) -> list[StackChange]:
    """The changes (newest first) where the model's release differs from the one before it."""
    changes = []
    previous: Release | None = None
    for change in reversed(history):
        release = change.release(model)
        if release != previous:
            changes.append(change)
        previous = release
    return list(reversed(changes))


def snapshot_at(history: Sequence[StackChange], when: datetime) -> StackChange | None:
    """The stack as it stood at `when`: the change committed newest at or before it."""
    return next((s for s in history if s.date <= when), None)


def releases_by_date(history: Sequence[StackChange], model: str) -> list[tuple[datetime, Release | None]]:
    return [(s.date, s.release(model)) for s in history]
