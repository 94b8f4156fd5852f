"""Commit dates a decision can trust: `modelctl check` refuses commits dated by a wrong clock.

Git takes a commit's date from the clock of the machine that made it. Soak times, step
intervals and analysis windows are measured from those dates (`modelctl.repo.history`, which
also reads each commit as made no earlier than the one before it), so CI, whose clock a laptop
cannot move, refuses a commit dated before its first parent or after CI's own time by more than
`CLOCK_SKEW` (clocks kept by NTP agree far better than that).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from modelctl.core.errors import UserError
from modelctl.core.releases import format_duration
from modelctl.repo import gitutil

CLOCK_SKEW = timedelta(minutes=5)


def misdated(root: Path, base: str | None, now: datetime) -> list[UserError]:
    """One error per commit of `base`..HEAD (HEAD alone without `base`; none outside a repository)
    dated more than `CLOCK_SKEW` before its first parent or after `now`. A parent a shallow clone
    lacks is not compared.

    Raises
    ------
    UserError
        `base` is not a commit.
    """
    if not gitutil.git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False).strip():
        return []  # not a repository, or no commit yet: no date to check
    span = f"{gitutil.resolve(root, base)}..HEAD" if base else "-1"
    commits = [
        line.split(" ")
        for line in gitutil.git(
            root, "log", "--format=%H %cI %P", span, *([] if base else ["HEAD"])
        ).splitlines()
        if line
    ]
    parents = {p[2] for p in commits if len(p) > 2}
    dates = _dates(root, parents)
    fix = (
        "set that machine's clock right (NTP), then give the commits new dates: "
        f"git rebase --force-rebase {base or 'HEAD~1'}"
    )
    errors = []
    for commit, date, *first in commits:
        when = datetime.fromisoformat(date)
        before = dates.get(first[0]) if first else None
        if before is not None and when < before - CLOCK_SKEW:
            errors.append(
                UserError(
                    f"commit {commit[:12]}",
                    f"is dated {when.isoformat()}, {format_duration((before - when).total_seconds())} before its parent "
                    f"{first[0][:12]} ({before.isoformat()}): made by a clock that is behind",
                    fix,
                )
            )
        elif when > now + CLOCK_SKEW:
            errors.append(
                UserError(
                    f"commit {commit[:12]}",
                    f"is dated {when.isoformat()}, {format_duration((when - now).total_seconds())} after this check's clock: "
                    "made by a clock that is ahead",
                    fix,
                )
            )
    return errors


def _dates(root: Path, commits: set[str]) -> dict[str, datetime]:
    if not commits:
        return {}
    out = gitutil.git(root, "log", "--no-walk", "--ignore-missing", "--format=%H %cI", *sorted(commits))
    return {
        commit: datetime.fromisoformat(date)
        for commit, date in (line.split(" ") for line in out.splitlines() if line)
    }
