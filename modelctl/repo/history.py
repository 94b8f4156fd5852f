"""What a stack file said at each commit, read from git alone.

History follows the first parent, so a state counts from the moment it landed on the branch
(a merge commit's date). Times are committer dates, which the committing machine's clock sets:
each is read as no earlier than the commit before it on the branch (a commit is made after its
parent), so a commit dated by a clock that is behind never makes a version look older than the
change before it (`modelctl check` refuses such commits in CI; see `repo.clock`).

In a shallow clone (the analysis CronJob clones with --depth) the oldest fetched commit looks as
if it added every file; history is deepened from the remote until the decision reading it has
what it needs (`enough`), never read from that boundary as if it were a change.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
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
    """One commit that changed a stack file, and the stack as it stood after it.

    `date` is when it took effect on the branch: its committer date, or the commit before it's
    when that is later (`committed` is the date as recorded).
    """

    commit: str
    author: str
    date: datetime
    subject: str
    # None where the file was deleted or does not validate at that commit.
    stack: Stack | None
    committed: datetime | None = None

    def release(self, model: str) -> Release | None:
        return self.stack.config.releases.get(model) if self.stack else None


# Whether a history (newest first) holds what a decision needs.
Enough = Callable[[list["StackChange"]], bool]


def stack_history(
    root: Path, stack: str, rev: str = "HEAD", enough: Enough | None = None
) -> list[StackChange]:
    """Every commit reachable from `rev` (first parents) that touched the stack file, newest first.

    In a shallow clone whose oldest fetched commit holds the file (so its history is cut),
    history is fetched deeper (doubling) until `enough(history)` holds, or, without `enough`,
    until the file's whole history is there.

    Raises
    ------
    UserError
        The clone is shallow and deepening it failed.
    """
    while True:
        history = _read(root, stack, rev)
        boundary = gitutil.shallow_commits(root)
        if not (history and history[-1].commit in boundary) or (enough is not None and enough(history)):
            return history
        gitutil.deepen(root, max(len(_dates(root, rev)), 50))


def covers(
    history: Sequence[StackChange],
    model: str,
    holds: Callable[[Release | None], bool],
    back_to: datetime | None = None,
) -> bool:
    """Whether `history` (newest first) shows where the current run of `model`'s release
    satisfying `holds` began (a change before it does not satisfy it), or reaches back to
    `back_to`: an `Enough` for `stack_history`."""
    run = list(itertools.takewhile(lambda change: holds(change.release(model)), history))
    return len(run) < len(history) or (back_to is not None and bool(history) and history[-1].date <= back_to)


def _read(root: Path, stack: str, rev: str) -> list[StackChange]:
    path = stack_file(stack)
    effective = _dates(root, rev)
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
        committed = datetime.fromisoformat(date)
        history.append(
            StackChange(
                commit,
                author,
                effective.get(commit, committed),
                subject,
                _stack_at(root, commit, stack),
                committed,
            )
        )
    return history


def _dates(root: Path, rev: str) -> dict[str, datetime]:
    """Each first-parent commit of `rev`: the latest committer date of it and the commits before it."""
    lines = gitutil.git(root, "log", "--first-parent", "--format=%H %cI", rev).split("\n")
    dates: dict[str, datetime] = {}
    latest: datetime | None = None
    for line in reversed([line for line in lines if line]):
        commit, date = line.split(" ", 1)
        committed = datetime.fromisoformat(date)
        latest = committed if latest is None or committed > latest else latest
        dates[commit] = latest
    return dates


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
