"""The release transaction: lock → validate → edit → policies → one commit, or nothing changes.

A release step validates what it changes: the model's record, its release on each stack and
the stack-wide settings (`read_state(only=[model])`), and the policies on what that renders;
`modelctl check` validates everything. Every change modelctl commits goes through `commit_files`: the release commands (one stack
file, with the analysis snapshot behind an automated decision, through `apply_release`) and
the registry (one model file, `commit_file`). A refused or failed change
leaves HEAD, the index and the working tree as they were.

One writer at a time: every state-changing operation holds `repository_lock` from reading the
state to its commit, so a commit's content is always what its message says. A second writer
waits a bounded time (`MODELCTL_LOCK_TIMEOUT`, or the caller's `lock_timeout`), then is refused
before it reads or writes anything.

The policy check is a parameter (`PolicyCheck`), so this layer never imports the `infra` and
`policies` shells; `modelctl.api` passes the real one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from filelock import FileLock, Timeout

from modelctl.core import releases, yamlio
from modelctl.core.errors import UserError, collect
from modelctl.core.releases import Proposal, Target
from modelctl.core.schema import Release, duration_seconds
from modelctl.core.state import State, cross_check, model_file, parse_stack, stack_file
from modelctl.repo import gitutil
from modelctl.repo.history import StackChange, covers, releases_by_date, stack_history
from modelctl.repo.state import read_state

# (state with the proposed stack file, stack name) -> raises UserError(s) on a violation.
PolicyCheck = Callable[[State, str], object]
# (where, its current release, the repository root) -> the next release.
Build = Callable[[Target, Release, Path], Proposal]

# Files git leaves while a merge, rebase, cherry-pick or revert waits for the user.
_IN_PROGRESS = ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "rebase-merge", "rebase-apply")

# The repository lock: a file in the git directory (never committed, shared by worktrees).
LOCK_FILE = "modelctl.lock"
LOCK_TIMEOUT_ENV = "MODELCTL_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 30.0


def lock_timeout(given: float | None = None) -> float:
    """Seconds a writer waits for the lock: `given`, else $MODELCTL_LOCK_TIMEOUT, else 30.

    Raises
    ------
    UserError
        The environment variable is not a number of seconds >= 0.
    """
    if given is not None:
        return given
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UserError(LOCK_TIMEOUT_ENV, f"{text!r} is not a number of seconds", "set it to e.g. 30")
    return seconds


@contextmanager
def repository_lock(root: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the repository's writer lock (`.git/modelctl.lock`, filelock) for the block.

    Re-entrant within one process, so an operation holding it may call another that takes it.

    Parameters
    ----------
    root
        The repository root.
    timeout
        Seconds to wait for another writer (default: `lock_timeout()`).

    Raises
    ------
    UserError
        Another process held the lock for longer than `timeout`; nothing was read or written.
    """
    seconds = lock_timeout(timeout)
    git_dir = gitutil.git(root, "rev-parse", "--git-common-dir").strip()
    path = (root / git_dir / LOCK_FILE).resolve()
    lock = FileLock(path, is_singleton=True)
    try:
        lock.acquire(timeout=seconds)
    except Timeout:
        raise UserError(
            str(root),
            f"another modelctl command is changing this repository (lock {git_dir}/{LOCK_FILE} held for over {seconds:g}s)",
            f"retry when it has finished, or wait longer with --lock-timeout or {LOCK_TIMEOUT_ENV}",
        ) from None
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class ReleaseChange:
    """What a release operation did (or, on a dry run, would do).

    `diff` is the unified diff of the stack file; `commit` the new commit's hash, None on a dry
    run, when the file was written without committing, or when nothing changed (`changed` False:
    a repeated rollback, a hold already cleared; `message` then says so).
    """

    action: str
    model: str
    stack: str
    message: str
    release: Release
    diff: str
    commit: str | None
    dry_run: bool
    changed: bool


def apply_release(
    root: Path,
    model: str,
    stack: str,
    build: Build,
    *,
    policies: PolicyCheck,
    dry_run: bool = False,
    commit: bool = True,
    evidence: Mapping[str, str] | None = None,
    message: Callable[[Proposal], str] | None = None,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """Validate, edit, check and commit one stack file, or change nothing at all.

    The repository lock is held from reading the state to the commit.

    Parameters
    ----------
    root
        The repository root.
    model, stack
        The model whose release changes, on this stack.
    build
        The transition (`modelctl.core.releases`) from the current release to the next.
    policies
        Runs the policies on the stack as it would be; raises on a violation.
    dry_run
        Only compute the change and its diff.
    commit
        Commit the stack file (False: write it and leave it uncommitted).
    evidence
        New files (path -> text) committed with the stack file, such as the analysis snapshot
        behind an automated decision.
    message
        The commit message from the proposal (default: the proposal's own).
    lock_timeout
        Seconds to wait for another writer (see `repository_lock`).

    Raises
    ------
    UserError, UserErrors
        Another writer holds the lock, the git state is not ready, the transition is refused,
        the new state is invalid, a policy fails, or the soak time of the required stack has
        not passed.
    """
    with repository_lock(root, lock_timeout):
        return _apply_release(
            root,
            model,
            stack,
            build,
            policies,
            dry_run=dry_run,
            commit=commit,
            evidence=evidence,
            message=message,
        )


def _apply_release(
    root: Path,
    model: str,
    stack: str,
    build: Build,
    policies: PolicyCheck,
    *,
    dry_run: bool,
    commit: bool,
    evidence: Mapping[str, str] | None,
    message: Callable[[Proposal], str] | None,
) -> ReleaseChange:
    path = stack_file(stack)
    require_git_ready(root, [path, model_file(model)])
    # What the step changes: the model's record, its releases, the stack-wide settings.
    state = read_state(root, only=[model])
    target = Target(state.model(model), state.stack(stack).name)
    before = current_release(state, target)
    proposal = build(target, before, root)
    if proposal.release == before:
        if not proposal.idempotent:
            raise target.refuse("the release would not change", "nothing to commit")
        return ReleaseChange(
            proposal.action, model, stack, proposal.message, before, "", None, dry_run, False
        )
    if not proposal.restores:
        releases.require_may_gain(target, before, proposal.release)
    old_text = (root / path).read_text(encoding="utf-8")
    new_text = releases.edit_stack_text(old_text, stack, model, before, proposal.release)
    changed = dataclasses.replace(
        state, stacks={**state.stacks, stack: parse_stack(new_text, stack, [model])}
    )
    collect(cross_check(changed))
    policies(changed, stack)
    if not proposal.restores:
        _require_soak(root, state, target, before, proposal)
    text = message(proposal) if message else proposal.message
    files = {path: new_text, **(evidence or {})}
    made = None if dry_run else commit_files(root, files, text, commit=commit)
    return ReleaseChange(
        action=proposal.action,
        model=model,
        stack=stack,
        message=text,
        release=proposal.release,
        diff=unified_diff(path, old_text, new_text),
        commit=made,
        dry_run=dry_run,
        changed=True,
    )


def commit_file(root: Path, path: str, text: str, message: str, *, commit: bool = True) -> str | None:
    """Write `text` to `path` (atomically) and commit only that file (see `commit_files`)."""
    return commit_files(root, {path: text}, message, commit=commit)


def commit_files(
    root: Path,
    files: Mapping[str, str],
    message: str,
    *,
    commit: bool = True,
    lock_timeout: float | None = None,
) -> str | None:
    """Write each file (path -> text, atomically; new folders made) and commit only them, under
    the repository lock (waiting up to `lock_timeout` seconds, see `repository_lock`).

    On any failure, the files and the index are put back as they were (new files removed), and
    each file only while it still holds what this call wrote: another writer's change is never
    undone. Returns the new commit's hash, or None when `commit` is False (the files are then
    only written).

    Raises
    ------
    UserError
        Another writer held the lock for longer than `lock_timeout`; nothing was written.
    """
    with repository_lock(root, lock_timeout):
        before = {path: _read(root / path) for path in files}
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            yamlio.write_atomic(root / path, text)
        if not commit:
            return None
        try:
            return gitutil.commit_only(root, list(files), message)
        except BaseException:
            # The index entries are this command's; each file only while it still holds our text.
            gitutil.git(root, "reset", "-q", "--", *files, check=False)
            for path, old in before.items():
                if _read(root / path) != files[path]:
                    continue
                if old is None:
                    (root / path).unlink(missing_ok=True)
                else:
                    yamlio.write_atomic(root / path, old)
            raise


def _read(file: Path) -> str | None:
    return file.read_text(encoding="utf-8") if file.exists() else None


def require_git_ready(root: Path, paths: list[str]) -> None:
    """Refuse a detached HEAD, an unfinished merge or rebase, conflicts, or dirty `paths`."""
    if not gitutil.git(root, "symbolic-ref", "-q", "HEAD", check=False).strip():
        raise UserError(str(root), "HEAD is detached", "check out a branch first")
    for marker in _IN_PROGRESS:
        if (root / gitutil.git(root, "rev-parse", "--git-path", marker).strip()).exists():
            raise UserError(
                str(root), f"a git operation is in progress ({marker})", "finish or abort it first"
            )
    if gitutil.git(root, "diff", "--name-only", "--diff-filter=U").strip():
        raise UserError(str(root), "there are unresolved conflicts", "resolve them and commit first")
    dirty = gitutil.dirty_paths(root, *paths)
    if dirty:
        raise UserError(
            dirty[0],
            "has uncommitted changes",
            "commit or discard them first, so the release commit holds only itself",
        )


def current_release(state: State, target: Target) -> Release:
    release = state.stack(target.stack).config.releases.get(target.model.name)
    if release is None:
        raise target.refuse(
            f"{target.model.name} has no release on {target.stack}",
            "add one to the stack file by hand with traffic {VERSION: 100} and commit it",
        )
    return release


def _require_soak(root: Path, state: State, target: Target, before: Release, proposal: Proposal) -> None:
    requires = state.stack(target.stack).config.environment.requires
    gaining = releases.gaining_traffic(before, proposal.release)
    if requires is None or not gaining:
        return
    now = datetime.now(UTC)
    model = target.model.name
    soak_start = now - timedelta(seconds=duration_seconds(requires.soak))

    def enough(history: list[StackChange]) -> bool:
        # When each version began serving there, or that it already served a soak ago.
        return all(covers(history, model, partial(releases.serves, version=v), soak_start) for v in gaining)

    past = releases_by_date(stack_history(root, requires.stack, enough=enough), model)
    releases.require_soaked(target, gaining, requires, past, now)


def unified_diff(path: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    return "".join(lines)
