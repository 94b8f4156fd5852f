"""`modelctl canary analyze`: Prometheus -> snapshot -> judge -> one commit with its evidence.

`--json` prints {"analyses": [one object per canary judged], "skipped": [{"stack", "reason"}]}:
a stack with no release in a canary state is skipped without querying Prometheus.

Exit codes (the analysis job and CI branch on them), those of every command (modelctl.cli): 0 every
canary stepped or promoted (or none to analyze), 2 at least one rolled back (a finding), 3 at
least one holds (none rolled back), 1 an error (one line on stderr, such as a held version).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from modelctl.cli import (
    EXIT_FINDING,
    EXIT_HOLD,
    EXIT_OK,
    Result,
    add_command,
    add_lock_timeout,
    progress,
    repo_root,
)

if TYPE_CHECKING:
    from modelctl.api import Analysis
    from modelctl.repo.transaction import ReleaseChange

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
NO_CANARY = "no release in a canary state"
HELP = "judge each canary from Prometheus and commit the next step, promotion or rollback with its snapshot"


def add(sub: SubParsers) -> argparse.ArgumentParser:
    parser = add_command(sub, "analyze", run, HELP)
    parser.add_argument("--stack", help="the stack to analyze (default: every stack)")
    parser.add_argument("--model", help="only this model's canary")
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus' URL (default: the stack's setting)")
    parser.add_argument("--dry-run", action="store_true", help="judge and show the change; commit nothing")
    parser.add_argument("--record", action="store_true", help="commit the snapshot of a hold too")
    add_lock_timeout(parser)
    return parser


def run(args: argparse.Namespace) -> Result:
    from modelctl import api
    from modelctl.repo.state import read_state

    root = repo_root(args)
    stacks = [args.stack] if args.stack else sorted(read_state(root).stacks)
    results: list[Analysis] = []
    skipped: list[str] = []
    for stack in stacks:
        progress(f"analyzing the canaries on {stack}")
        found = api.canary_analyze(
            root,
            stack=stack,
            model=args.model,
            prometheus=args.prometheus,
            dry_run=args.dry_run,
            record=args.record,
            lock_timeout=args.lock_timeout,
        )
        results += found
        skipped += [] if found else [stack]
    outcomes = {r.outcome for r in results}
    code = EXIT_FINDING if "rollback" in outcomes else EXIT_HOLD if "hold" in outcomes else EXIT_OK
    data = {
        "analyses": [applied_data(r, args.dry_run) for r in results],
        "skipped": [{"stack": stack, "reason": NO_CANARY} for stack in skipped],
    }
    return Result(data, _text(results, skipped, args.dry_run), code)


class _Decision(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class Applied(Protocol):
    """What an analysis did with its decision: a canary's `api.Analysis`, an experiment's `api.Experiment`."""

    @property
    def model(self) -> str: ...
    @property
    def stack(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def commit(self) -> str | None: ...
    @property
    def snapshot_path(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def change(self) -> ReleaseChange | None: ...
    @property
    def decision(self) -> _Decision: ...


def applied_data(result: Applied, dry_run: bool) -> dict[str, object]:
    """An analysis result as --json prints it."""
    return {
        "model": result.model,
        "stack": result.stack,
        "outcome": result.outcome,
        "commit": result.commit,
        "snapshot": _kept(result, dry_run),
        "message": result.message,
        "diff": result.change.diff if result.change else "",
        "decision": result.decision.to_dict(),
    }


def applied_head(result: Applied, dry_run: bool) -> str:
    """The first line of an analysis result: the outcome, and the commit made or why none."""
    done = (
        f"committed {result.commit[:12]}"
        if result.commit
        else "dry run: nothing committed"
        if dry_run
        else "nothing committed"
    )
    kept = _kept(result, dry_run)
    unkept = (
        "snapshot not committed on a hold; --record commits it"
        if result.outcome == "hold"
        else "snapshot not committed"
    )
    where = (f"would commit snapshot {kept}" if dry_run else f"snapshot {kept}") if kept else unkept
    return f"{result.outcome.upper()} {result.model} on {result.stack}: {done} ({where})"


def _kept(result: Applied, dry_run: bool) -> str | None:
    """The snapshot's path in the repository: committed, or where a dry run would commit it (a
    hold or a continuing experiment changes no release, and commits no snapshot unless recorded)."""
    return result.snapshot_path if result.commit or (dry_run and result.change is not None) else None


def _text(results: list[Analysis], skipped: list[str], dry_run: bool) -> str:
    from modelctl.cli.judge import format_decision

    blocks = [f"skipped {', '.join(skipped)}: {NO_CANARY}"] if skipped else []
    for result in results:
        head = applied_head(result, dry_run)
        diff = result.change.diff if result.change and dry_run else ""
        blocks.append("\n".join(filter(None, [head, format_decision(result.decision), diff])))
    return "\n\n".join(blocks)
