"""Release commands: each edits one stack file, validates the whole state, and commits that file.

`canary`, `promote`, `ab`, `shadow`, `bluegreen` and `rollback` change traffic; `status` and
`history` only read. A refused or failed command leaves HEAD, the index and the working tree
as they were.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

from modelctl.cli import Result, add_command, repo_root
from modelctl.cli.check import check_policies
from modelctl.core import releases, yamlio
from modelctl.core.errors import UserError, collect
from modelctl.core.releases import Proposal, Target
from modelctl.core.schema import Release
from modelctl.core.state import State, cross_check, model_file, parse_stack, stack_file
from modelctl.repo import gitutil
from modelctl.repo.history import (
    Snapshot,
    release_changes,
    releases_by_commit,
    releases_by_date,
    snapshot_at,
    stack_history,
)
from modelctl.repo.state import read_state

Build = Callable[[Target, Release, Path], Proposal]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# Files git leaves while a merge, rebase, cherry-pick or revert waits for the user.
_IN_PROGRESS = ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "rebase-merge", "rebase-apply")


def register(sub: SubParsers) -> None:
    _register_canary(sub)
    promote = _release_command(
        sub, "promote", run_promote, "the canary takes 100%%; the old stable stays at 0%%"
    )
    promote.add_argument("model")
    ab = _release_command(sub, "ab", run_ab, "split traffic between versions for an A/B experiment")
    ab.add_argument("model")
    ab.add_argument("--split", required=True, metavar="V=W,...", help="e.g. v1.0.0=50,v1.1.0=50")
    ab.add_argument("--sticky", action="store_true", help="keep each user on one version by cookie")
    shadow = _release_command(
        sub, "shadow", run_shadow, "mirror traffic to a version, discarding its responses"
    )
    shadow.add_argument("model")
    shadow.add_argument("version", nargs="?")
    mode = shadow.add_mutually_exclusive_group(required=True)
    mode.add_argument("--percent", type=float, help="share of requests mirrored, above 0 and at most 100")
    mode.add_argument("--off", action="store_true", help="stop mirroring")
    bluegreen = _release_command(
        sub, "bluegreen", run_bluegreen, "deploy a version at 0%% next to the stable one, then --switch"
    )
    bluegreen.add_argument("model")
    bluegreen.add_argument(
        "version", nargs="?", help="the green version (with --switch: default the newest at 0%%)"
    )
    bluegreen.add_argument(
        "--mirror", type=float, metavar="PERCENT", help="also mirror this share of traffic to it"
    )
    bluegreen.add_argument("--switch", action="store_true", help="move all traffic to the green version")
    rollback = _release_command(
        sub, "rollback", run_rollback, "back to the last state in git history fully on one stable version"
    )
    rollback.add_argument("model")
    rollback.add_argument("--to", metavar="VERSION", help="the last state fully on this version")
    status = add_command(sub, "status", run_status, "what serves where, from the working tree")
    status.add_argument("--stack", help="only this stack")
    history = add_command(sub, "history", run_history, "every release change of a model on a stack, from git")
    history.add_argument("model")
    history.add_argument("--stack", required=True)
    history.add_argument(
        "--at", metavar="TIMESTAMP", help="what served at this time (ISO 8601, UTC if no zone)"
    )


def _register_canary(sub: SubParsers) -> None:
    canary = _release_command(
        sub, "canary", run_canary, "start a canary or move it to the next analysis step"
    )
    canary.add_argument("model")
    canary.add_argument("version")
    canary.add_argument("--weight", type=int, help="this weight (1-99) instead of the next analysis step")


def _release_command(
    sub: SubParsers, name: str, handler: Callable[..., Result], help: str
) -> argparse.ArgumentParser:
    parser = add_command(sub, name, handler, help)
    parser.add_argument("--stack", required=True, help="the stack (environment) to change")
    parser.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    parser.add_argument("--no-commit", action="store_true", help="edit the stack file but do not commit")
    return parser


# ---------------------------------------------------------------- handlers


def run_canary(args: argparse.Namespace) -> Result:
    return apply(args, lambda t, r, _: releases.canary(t, r, args.version, args.weight))


def run_promote(args: argparse.Namespace) -> Result:
    return apply(args, lambda t, r, _: releases.promote(t, r))


def run_ab(args: argparse.Namespace) -> Result:
    split = releases.parse_split(args.split)
    return apply(args, lambda t, r, _: releases.ab(t, r, split, args.sticky))


def run_shadow(args: argparse.Namespace) -> Result:
    if args.off:
        return apply(args, lambda t, r, _: releases.shadow_off(t, r))
    if not args.version:
        raise UserError("shadow", "no version given", "name the version to mirror, or pass --off")
    return apply(args, lambda t, r, _: releases.shadow(t, r, args.version, args.percent))


def run_bluegreen(args: argparse.Namespace) -> Result:
    if args.switch:
        if args.mirror is not None:
            raise UserError("bluegreen", "--mirror does not go with --switch", "mirror when deploying")
        return apply(args, lambda t, r, _: releases.bluegreen_switch(t, r, args.version))
    if not args.version:
        raise UserError("bluegreen", "no version given", "name the green version to deploy, or pass --switch")
    return apply(args, lambda t, r, _: releases.bluegreen(t, r, args.version, args.mirror))


def run_rollback(args: argparse.Namespace) -> Result:
    def build(target: Target, release: Release, root: Path) -> Proposal:
        past = releases_by_commit(stack_history(root, target.stack), target.model.name)
        return releases.rollback(target, release, past, args.to)

    return apply(args, build)


# ---------------------------------------------------------------- applying a change


def apply(args: argparse.Namespace, build: Build) -> Result:
    """Validate, edit, check and commit one stack file, or change nothing at all."""
    root = repo_root(args)
    path = stack_file(args.stack)
    require_git_ready(root, [path, model_file(args.model)])
    state = read_state(root)
    target = Target(state.model(args.model), state.stack(args.stack).name)
    before = current_release(state, target)
    proposal = build(target, before, root)
    if proposal.release == before:
        raise target.refuse("the release would not change", "nothing to commit")
    releases.require_may_gain(target, before, proposal.release)
    old_text = (root / path).read_text(encoding="utf-8")
    new_text = releases.edit_stack_text(old_text, args.stack, args.model, before, proposal.release)
    validate_with(state, args.stack, new_text)
    if proposal.soak_applies:
        require_soak(root, state, target, before, proposal)
    diff = unified_diff(path, old_text, new_text)
    commit = None
    if args.no_commit and not args.dry_run:
        yamlio.write_atomic(root / path, new_text)
    elif not args.dry_run:
        commit = write_and_commit(root, path, old_text, new_text, proposal.message)
    return _applied(args, proposal, diff, commit)


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


def validate_with(state: State, stack: str, text: str) -> None:
    """`modelctl check --stack` on the state with this stack file's new text: schema, cross-file
    rules and the policies on the objects it renders."""
    changed = dataclasses.replace(state, stacks={**state.stacks, stack: parse_stack(text, stack)})
    collect(cross_check(changed))
    check_policies(changed, stack)


def require_soak(root: Path, state: State, target: Target, before: Release, proposal: Proposal) -> None:
    requires = state.stack(target.stack).config.environment.requires
    gaining = releases.gaining_traffic(before, proposal.release)
    if requires is None or not gaining:
        return
    past = releases_by_date(stack_history(root, requires.stack), target.model.name)
    releases.require_soaked(target, gaining, requires, past, datetime.now(UTC))


def unified_diff(path: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    return "".join(lines)


def write_and_commit(root: Path, path: str, old_text: str, new_text: str, message: str) -> str:
    """Write the file and commit only it; on any failure put the file and the index back."""
    yamlio.write_atomic(root / path, new_text)
    try:
        return gitutil.commit_only(root, [path], message)
    except BaseException:
        yamlio.write_atomic(root / path, old_text)
        gitutil.git(root, "reset", "-q", "--", path, check=False)
        raise


def _applied(args: argparse.Namespace, proposal: Proposal, diff: str, commit: str | None) -> Result:
    release = proposal.release
    data = {
        "action": proposal.action,
        "model": args.model,
        "stack": args.stack,
        "message": proposal.message,
        **release_data(release),
        "diff": diff,
        "commit": commit,
        "dry_run": args.dry_run,
    }
    if args.dry_run:
        outcome = "dry run: nothing written"
    elif commit is None:
        outcome = f"written {stack_file(args.stack)}, not committed"
    else:
        outcome = f"committed {commit[:12]}"
    return Result(data, f"{diff}{outcome}: {proposal.message}")


def release_data(release: Release) -> dict[str, Any]:
    return {
        "traffic": dict(release.traffic),
        "shadow": release.shadow.model_dump() if release.shadow else None,
        "sticky": release.sticky.model_dump() if release.sticky else None,
    }


def describe(release: Release | None) -> str:
    if release is None:
        return "not deployed"
    text = releases.describe_traffic(release.traffic)
    if release.shadow:
        text += f"; shadow {release.shadow.version} {release.shadow.percent:g}%"
    if release.sticky:
        text += f"; sticky by cookie {release.sticky.cookie}"
    return text


# ---------------------------------------------------------------- reading


def run_status(args: argparse.Namespace) -> Result:
    state = read_state(repo_root(args))
    stacks = [state.stack(args.stack)] if args.stack else [state.stacks[n] for n in sorted(state.stacks)]
    data = {s.name: {m: release_data(r) for m, r in s.config.releases.items()} for s in stacks}
    lines = [
        f"{stack.name:<12} {model:<24} {describe(release)}"
        for stack in stacks
        for model, release in stack.config.releases.items()
    ]
    return Result(data, "\n".join(lines) or "no model is released on any stack")


def run_history(args: argparse.Namespace) -> Result:
    snapshots = stack_history(repo_root(args), args.stack)
    if args.at:
        return _history_at(args, snapshots, parse_timestamp(args.at))
    changes = release_changes(snapshots, args.model)
    data = [_snapshot_data(s, args.model) for s in changes]
    lines = [
        f"{s.commit[:12]}  {s.date.isoformat()}  {s.author}  {describe(s.release(args.model))}  ({s.subject})"
        for s in changes
    ]
    return Result(data, "\n".join(lines) or f"no commit on {stack_file(args.stack)} mentions {args.model}")


def _history_at(args: argparse.Namespace, snapshots: list[Snapshot], when: datetime) -> Result:
    snapshot = snapshot_at(snapshots, when)
    if snapshot is None:
        return Result(
            {"at": when.isoformat(), "commit": None, "traffic": None},
            f"at {when.isoformat()} {stack_file(args.stack)} did not exist yet",
        )
    data = {"at": when.isoformat(), **_snapshot_data(snapshot, args.model)}
    text = (
        f"at {when.isoformat()} {args.model} on {args.stack}: {describe(snapshot.release(args.model))} "
        f"(commit {snapshot.commit[:12]} of {snapshot.date.isoformat()}, {snapshot.subject})"
    )
    return Result(data, text)


def _snapshot_data(snapshot: Snapshot, model: str) -> dict[str, Any]:
    release = snapshot.release(model)
    return {
        "commit": snapshot.commit,
        "author": snapshot.author,
        "date": snapshot.date.isoformat(),
        "subject": snapshot.subject,
        **(release_data(release) if release else {"traffic": None, "shadow": None, "sticky": None}),
    }


def parse_timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            "--at", f"{text!r} is not a timestamp", "write ISO 8601 like 2026-11-24T12:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
