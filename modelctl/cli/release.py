"""Release commands: argument parsing and printing over `modelctl.api`.

`canary`, `promote`, `ab`, `shadow`, `bluegreen`, `rollback` and `release-hold clear` change a
release through the transaction (`modelctl.repo.transaction`): each edits one stack file,
validates the whole state, and commits that file, or changes nothing. `status` and `history`
only read.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

from modelctl import api
from modelctl.cli import MODEL_HELP, Result, add_command, add_lock_timeout, repo_root
from modelctl.core import releases
from modelctl.core.errors import UserError
from modelctl.core.schema import EXPERIMENT_METRICS, Release, Version
from modelctl.core.state import stack_file
from modelctl.repo.history import (
    StackChange,
    release_changes,
    snapshot_at,
    stack_history,
)
from modelctl.repo.state import read_state
from modelctl.repo.transaction import ReleaseChange

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(sub: SubParsers) -> None:
    _register_canary(sub)
    promote = _release_command(
        sub,
        "promote",
        run_promote,
        "the canary takes 100% of traffic in one step; the old stable stays deployed at 0% as the rollback target",
    )
    promote.add_argument("model", help=MODEL_HELP)
    ab = _release_command(sub, "ab", run_ab, "split traffic between versions for an A/B experiment")
    ab.add_argument("model", help=MODEL_HELP)
    ab.add_argument("--split", required=True, metavar="V=W,...", help="e.g. v1.0.0=50,v1.1.0=50")
    ab.add_argument("--sticky", action="store_true", help="keep each user on one version by cookie")
    experiment = ab.add_argument_group(
        "the experiment ('ab analyze' decides it; settings already beside the release are kept unless given)"
    )
    experiment.add_argument("--metric", choices=EXPERIMENT_METRICS, help="the primary metric (required)")
    experiment.add_argument(
        "--effect",
        type=float,
        help="the smallest difference worth detecting, in the metric's unit (required)",
    )
    experiment.add_argument(
        "--min-duration", metavar="DURATION", help="no decision before this long (default 7d: whole weeks)"
    )
    experiment.add_argument(
        "--max-duration",
        metavar="DURATION",
        help="past it, a warning asks to end the experiment (default 28d)",
    )
    experiment.add_argument(
        "--guardrails", metavar="M,...", help="metrics the winner must not worsen (default errors,latency)"
    )
    experiment.add_argument("--alpha", type=float, help="the error rate of the decision (default 0.05)")
    experiment.add_argument(
        "--value-sd", type=float, help="for the value metric: its spread per labelled request"
    )
    shadow = _release_command(
        sub, "shadow", run_shadow, "mirror traffic to a version, discarding its responses"
    )
    shadow.add_argument("model", help=MODEL_HELP)
    shadow.add_argument("version", nargs="?", help="the version to mirror to (not with --off)")
    mode = shadow.add_mutually_exclusive_group(required=True)
    mode.add_argument("--percent", type=float, help="share of requests mirrored, above 0 and at most 100")
    mode.add_argument("--off", action="store_true", help="stop mirroring")
    bluegreen = _release_command(
        sub, "bluegreen", run_bluegreen, "deploy a version at 0% next to the stable one, then --switch"
    )
    bluegreen.add_argument("model", help=MODEL_HELP)
    bluegreen.add_argument(
        "version", nargs="?", help="the green version (with --switch: default the newest at 0%%)"
    )
    bluegreen.add_argument(
        "--mirror", type=float, metavar="PERCENT", help="also mirror this share of traffic to it"
    )
    bluegreen.add_argument("--switch", action="store_true", help="move all traffic to the green version")
    rollback = _release_command(
        sub,
        "rollback",
        run_rollback,
        "all traffic back to the stable version the release started from; the versions left are held "
        "on the stack (no release gives them traffic until 'release-hold clear'); already there: a no-op",
    )
    rollback.add_argument("model", help=MODEL_HELP)
    rollback.add_argument(
        "--to", metavar="VERSION", help="roll back to this version instead of the release's stable one"
    )
    rollback.add_argument("--reason", help="why, recorded with each hold (e.g. an incident link)")
    _register_hold(sub)
    status = add_command(sub, "status", run_status, "what serves where, from the working tree")
    status.add_argument("--stack", help="only this stack")
    history = add_command(sub, "history", run_history, "every release change of a model on a stack, from git")
    history.add_argument("model", help=MODEL_HELP)
    history.add_argument("--stack", required=True, help="the stack (environment) whose history to show")
    history.add_argument(
        "--at", metavar="TIMESTAMP", help="what served at this time (ISO 8601, UTC if no zone)"
    )


def _register_canary(sub: SubParsers) -> None:
    canary = _release_command(
        sub, "canary", run_canary, "start a canary or move it to the next analysis step"
    )
    canary.add_argument("model", help=MODEL_HELP)
    canary.add_argument("version", help="the canary version")
    canary.add_argument("--weight", type=int, help="this weight (1-99) instead of the next analysis step")
    canary.add_argument(
        "--evidence",
        metavar="REPORT.json",
        help="a shadow report of the version ('modelctl shadow report --json'), committed with the change",
    )


def _register_hold(sub: SubParsers) -> None:
    group = sub.add_parser("release-hold", help="lift the hold a rollback put on a version")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    clear = _release_command(
        actions,
        "clear",
        run_clear_hold,
        "let releases give a held version traffic on the stack again (commit it for review)",
    )
    clear.add_argument("model", help=MODEL_HELP)
    clear.add_argument("version", help="the held version")
    clear.add_argument("--reason", required=True, help="why the version is fit again (kept in the commit)")


def _release_command(
    sub: SubParsers, name: str, handler: Callable[..., Result], help: str
) -> argparse.ArgumentParser:
    parser = add_command(sub, name, handler, help)
    parser.add_argument("--stack", required=True, help="the stack (environment) to change")
    parser.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    parser.add_argument("--no-commit", action="store_true", help="edit the stack file but do not commit")
    add_lock_timeout(parser)
    return parser


# ---------------------------------------------------------------- handlers


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "stack": args.stack,
        "dry_run": args.dry_run,
        "commit": not args.no_commit,
        "lock_timeout": args.lock_timeout,
    }


def run_canary(args: argparse.Namespace) -> Result:
    return _applied(
        api.canary(
            repo_root(args),
            args.model,
            args.version,
            weight=args.weight,
            evidence=Path(args.evidence) if args.evidence else None,
            **_options(args),
        )
    )


def run_promote(args: argparse.Namespace) -> Result:
    return _applied(api.promote(repo_root(args), args.model, **_options(args)))


def run_ab(args: argparse.Namespace) -> Result:
    split = releases.parse_split(args.split)
    settings = {
        "metric": args.metric,
        "effect": args.effect,
        "min_duration": args.min_duration,
        "max_duration": args.max_duration,
        "guardrails": args.guardrails.split(",") if args.guardrails else None,
        "alpha": args.alpha,
        "value_sd": args.value_sd,
    }
    return _applied(
        api.ab(
            repo_root(args),
            args.model,
            split=split,
            sticky=args.sticky,
            experiment=settings,
            **_options(args),
        )
    )


def run_shadow(args: argparse.Namespace) -> Result:
    if args.off:
        return _applied(api.shadow_off(repo_root(args), args.model, **_options(args)))
    if not args.version:
        raise UserError("shadow", "no version given", "name the version to mirror, or pass --off")
    return _applied(
        api.shadow(repo_root(args), args.model, args.version, percent=args.percent, **_options(args))
    )


def run_bluegreen(args: argparse.Namespace) -> Result:
    root = repo_root(args)
    if args.switch:
        if args.mirror is not None:
            raise UserError("bluegreen", "--mirror does not go with --switch", "mirror when deploying")
        return _applied(api.bluegreen_switch(root, args.model, version=args.version, **_options(args)))
    if not args.version:
        raise UserError("bluegreen", "no version given", "name the green version to deploy, or pass --switch")
    return _applied(api.bluegreen(root, args.model, args.version, mirror=args.mirror, **_options(args)))


def run_rollback(args: argparse.Namespace) -> Result:
    return _applied(
        api.rollback(repo_root(args), args.model, to=args.to, reason=args.reason, **_options(args))
    )


def run_clear_hold(args: argparse.Namespace) -> Result:
    return _applied(
        api.clear_hold(repo_root(args), args.model, args.version, reason=args.reason, **_options(args))
    )


def _applied(change: ReleaseChange) -> Result:
    data = {
        "action": change.action,
        "model": change.model,
        "stack": change.stack,
        "message": change.message,
        **release_data(change.release),
        "diff": change.diff,
        "commit": change.commit,
        "dry_run": change.dry_run,
        "changed": change.changed,
    }
    if not change.changed:
        return Result(data, f"no change: {change.message}")
    if change.dry_run:
        outcome = "dry run: nothing written"
    elif change.commit is None:
        outcome = f"written {stack_file(change.stack)}, not committed"
    else:
        outcome = f"committed {change.commit[:12]}"
    return Result(data, f"{change.diff}{outcome}: {change.message}")


def release_data(release: Release) -> dict[str, Any]:
    return {
        "traffic": dict(release.traffic),
        "split": split_data(release),
        "shadow": release.shadow.model_dump() if release.shadow else None,
        "sticky": release.sticky.model_dump() if release.sticky else None,
        "rollback_to": release.rollback_to,
        "held": {v: h.model_dump(mode="json") for v, h in release.held.items()},
    }


def split_data(release: Release) -> dict[str, str] | None:
    """Who is who in a two-version split, from the release record (`releases.split_roles`): the
    stable version it started from and the candidate (a canary, an experiment's treatment)."""
    roles, text = releases.split_roles(release), releases.describe_split(release)
    if roles is None or text is None:
        return None
    return {"kind": text.split(" ", 1)[0], "stable": roles[0], "candidate": roles[1]}


def describe(release: Release | None) -> str:
    if release is None:
        return "not deployed"
    text = releases.describe_traffic(release.traffic)
    split = releases.describe_split(release)
    if split:
        text += f"; {split}"
    if release.shadow:
        text += f"; shadow {release.shadow.version} {release.shadow.percent:g}%"
    if release.sticky:
        text += f"; sticky by cookie {release.sticky.cookie}"
    if release.held:
        text += f"; held: {', '.join(sorted(release.held, key=Version))}"
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
    root = repo_root(args)
    state = read_state(root, only=[args.model])
    state.model(args.model)
    stack = state.stack(args.stack).name
    if args.at:
        when = parse_timestamp(args.at)
        # A shallow clone is deepened back to that instant, not further.
        history = stack_history(root, stack, enough=lambda past: past[-1].date <= when)
        return _history_at(args, history, when)
    changes = release_changes(stack_history(root, stack), args.model)
    data = [_change_data(s, args.model) for s in changes]
    lines = [
        f"{s.commit[:12]}  {_date(s)}  {s.author}  {describe(s.release(args.model))}  ({s.subject})"
        for s in changes
    ]
    return Result(data, "\n".join(lines) or f"no commit on {stack_file(args.stack)} mentions {args.model}")


def _history_at(args: argparse.Namespace, history: list[StackChange], when: datetime) -> Result:
    change = snapshot_at(history, when)
    if change is None:
        return Result(
            {"at": when.isoformat(), "commit": None, "traffic": None},
            f"at {when.isoformat()} {stack_file(args.stack)} did not exist yet",
        )
    data = {"at": when.isoformat(), **_change_data(change, args.model)}
    text = (
        f"at {when.isoformat()} {args.model} on {args.stack}: {describe(change.release(args.model))} "
        f"(commit {change.commit[:12]} of {change.date.isoformat()}, {change.subject})"
    )
    return Result(data, text)


def _date(change: StackChange) -> str:
    """When it took effect, and the date its committer's clock wrote when that was earlier."""
    dated = change.committed
    return change.date.isoformat() + (
        f" (dated {dated.isoformat()})" if dated and dated != change.date else ""
    )


def _change_data(change: StackChange, model: str) -> dict[str, Any]:
    release = change.release(model)
    return {
        "commit": change.commit,
        "author": change.author,
        "date": change.date.isoformat(),
        "committed": change.committed.isoformat() if change.committed else None,
        "subject": change.subject,
        **(release_data(release) if release else dict.fromkeys(("traffic", "shadow", "sticky", "held"))),
    }


def parse_timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            "--at", f"{text!r} is not a timestamp", "write ISO 8601 like 2026-11-24T12:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
