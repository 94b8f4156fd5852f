"""The canary commands: `modelctl judge` and the `canary` group's `canary analyze` (and `canary judge`).

`modelctl judge --snapshot FILE`: promote, hold or rollback, from one metrics snapshot;
`modelctl judge --replay COMMIT`: an analysis commit's decision recomputed from its snapshot.
The old spelling `modelctl canary judge` works for one more release, with a deprecation line on
stderr.

`modelctl canary analyze`: Prometheus -> snapshot -> judge -> one commit with its evidence.
`--json` prints {"analyses": [one object per canary judged], "skipped": [{"stack", "reason"}]}:
a stack with no release in a canary state is skipped without querying Prometheus.

`canary` is also the release command `modelctl canary <model> <version>` (modelctl.cli.release);
`canary judge` and `canary analyze` are its subcommands (`add_subcommands`), registered here.

Exit codes (the analysis job and CI branch on them), those of every command (modelctl.cli): the
judge exits 0 promote, 2 rollback (a finding), 3 hold; `canary analyze` 0 every canary stepped
or promoted (or none to analyze), 2 at least one rolled back, 3 at least one holds (none rolled
back), 1 an error (one line on stderr, such as a held version).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from modelctl.cli import (
    EXIT_FINDING,
    EXIT_HOLD,
    EXIT_OK,
    Handler,
    Result,
    add_command,
    add_lock_timeout,
    add_subcommands,
    progress,
    repo_root,
)
from modelctl.cli.analysis import applied_data, applied_head
from modelctl.core.errors import UserError

if TYPE_CHECKING:
    from modelctl.api import Analysis
    from modelctl.core.analysis.judge import Decision
    from modelctl.core.analysis.metrics import Evidence

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
JUDGE_HELP = (
    "decide promote, hold or rollback from a canary metrics snapshot; "
    f"exit {EXIT_OK} promote, {EXIT_FINDING} rollback, {EXIT_HOLD} hold"
)
# The decision is the exit code, so a pipeline step can branch on it without parsing output.
EXIT_CODE = {"promote": EXIT_OK, "rollback": EXIT_FINDING, "hold": EXIT_HOLD}
NO_CANARY = "no release in a canary state"
ANALYZE_HELP = (
    "judge each canary from Prometheus and commit the next step, promotion or rollback with its snapshot"
)
DEPRECATED = (
    "warning: 'modelctl canary judge' is deprecated and goes in the next release; use 'modelctl judge'"
)


def register(sub: SubParsers) -> None:
    _add_judge(sub, run)
    add_subcommands(
        sub, "canary", {"judge": lambda s: _add_judge(s, run_deprecated), "analyze": _add_analyze}
    )


def _add_judge(sub: SubParsers, handler: Handler) -> argparse.ArgumentParser:
    parser = add_command(sub, "judge", handler, JUDGE_HELP)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--snapshot", metavar="FILE", help="a snapshot JSON (analysis/<stack>/<model>/*.json)"
    )
    source.add_argument(
        "--replay",
        metavar="COMMIT",
        help="recompute the decision of an analysis commit from its snapshot; exit 2 (a finding) if it differs",
    )
    return parser


def run_deprecated(args: argparse.Namespace) -> Result:
    progress(DEPRECATED)
    return run(args)


def run(args: argparse.Namespace) -> Result:
    # Loaded when the command runs: scipy is not what every other command should wait for.
    from modelctl.core.analysis.judge import judge

    if args.replay:
        return _replay(args)
    path = Path(args.snapshot)
    data = read_snapshot(path)
    decision = judge(data, source=str(path))
    if decision.action == "promote" and _short_format_1(data):
        # Format 1 is judged as it was when committed (its replay must not change).
        progress(
            f"note: {path} is a format 1 snapshot (no 'format' key), whose window is shorter than its "
            'analysis.interval: the interval is not applied; write "format": 2 to have it'
        )
    return Result(decision.to_dict(), format_decision(decision), EXIT_CODE[decision.action])


def _short_format_1(data: Any) -> bool:
    from modelctl.core.analysis.snapshot import parse_snapshot
    from modelctl.core.schema import duration_seconds

    snapshot = parse_snapshot(data)
    seconds = snapshot.window_seconds()
    return (
        snapshot.format == 1
        and seconds is not None
        and seconds < duration_seconds(snapshot.analysis.interval)
    )


def _replay(args: argparse.Namespace) -> Result:
    from modelctl import api

    replayed = api.replay(repo_root(args), args.replay)
    verdict = (
        "matches"
        if replayed.matches
        else f"DIFFERS (committed {replayed.recorded_action or '?'}, snapshot sha256 {replayed.recorded_digest[:12] or '?'})"
    )
    text = (
        f"replay of {replayed.commit[:12]} from {replayed.snapshot_path}: {replayed.decision.action.upper()}, "
        f"{verdict}\n\n{format_decision(replayed.decision)}"
    )
    data = {
        "commit": replayed.commit,
        "snapshot": replayed.snapshot_path,
        "recorded_action": replayed.recorded_action,
        "matches": replayed.matches,
        "decision": replayed.decision.to_dict(),
    }
    return Result(data, text, EXIT_OK if replayed.matches else EXIT_FINDING)


def read_snapshot(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(
            str(path), f"cannot read the snapshot ({exc.strerror})", "pass the collector's JSON file"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(str(path), f"not valid JSON (line {exc.lineno}: {exc.msg})", "fix the file") from None


# ---------------------------------------------------------------- canary analyze


def _add_analyze(sub: SubParsers) -> argparse.ArgumentParser:
    parser = add_command(sub, "analyze", run_analyze, ANALYZE_HELP)
    parser.add_argument("--stack", help="the stack to analyze (default: every stack)")
    parser.add_argument("--model", help="only this model's canary")
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus' URL (default: the stack's setting)")
    parser.add_argument("--dry-run", action="store_true", help="judge and show the change; commit nothing")
    parser.add_argument("--record", action="store_true", help="commit the snapshot of a hold too")
    parser.add_argument(
        "--rollbacks-only",
        action="store_true",
        help="commit rollbacks only; show a step or promotion as --dry-run does (it goes through review)",
    )
    add_lock_timeout(parser)
    return parser


def run_analyze(args: argparse.Namespace) -> Result:
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
            rollbacks_only=args.rollbacks_only,
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
    return Result(data, _analyze_text(results, skipped, args.dry_run, args.rollbacks_only), code)


def _analyze_text(results: list[Analysis], skipped: list[str], dry_run: bool, rollbacks_only: bool) -> str:
    blocks = [f"skipped {', '.join(skipped)}: {NO_CANARY}"] if skipped else []
    for result in results:
        head = applied_head(result, dry_run)
        if rollbacks_only and not dry_run and result.outcome in ("step", "promote"):
            head += (
                "\n  left for review: --rollbacks-only commits rollbacks only (propose it in a pull request)"
            )
        diff = result.change.diff if result.change and dry_run else ""
        blocks.append("\n".join(filter(None, [head, format_decision(result.decision), diff])))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- printing a decision


def format_decision(decision: Decision) -> str:
    lines = [
        f"{decision.model} on {decision.stack}: {decision.action.upper()} "
        f"canary {decision.canary_version} against {decision.baseline_version} "
        f"(snapshot {decision.taken_at}, alpha {decision.alpha:g})",
        *(f"  - {reason}" for reason in decision.reasons),
        *(f"  ! {warning}" for warning in decision.warnings),
        *_needs(decision),
        "",
        f"{'metric':<8}  {'canary':<22}  {'baseline':<22}  {'p harm':>7}  {'adj.':>7}  {'p ok':>7}  outcome",
    ]
    lines += [_row(e) for e in decision.evidence]
    lines += [f"  {e.metric}: {e.note}" for e in decision.evidence if e.note]
    lines += ["", f"snapshot sha256 {decision.snapshot_sha256}"]
    return "\n".join(lines)


def _row(e: Evidence) -> str:
    from modelctl.core.analysis.metrics import describe

    canary, baseline = describe(e, "canary"), describe(e, "baseline")
    return (
        f"{e.metric:<8}  {canary:<22}  {baseline:<22}  {_p(e.p_value):>7}  {_p(e.p_adjusted):>7}  "
        f"{_p(e.p_noninferior):>7}  {e.outcome}"
    )


def _needs(decision: Decision) -> list[str]:
    from modelctl.core.analysis.judge import duration_text

    if not decision.needs:
        return []
    more, seconds = decision.needs["canary_requests"], decision.needs["seconds"]
    if more == 0 and seconds is not None:
        return [f"  needs: time, about {duration_text(seconds)} (analysis.interval)"]
    if more is None:
        return ["  needs: better estimates; more requests alone would not pass them (early ones often move)"]
    eta = f" (about {duration_text(seconds)} at the current rate)" if seconds is not None else ""
    return [f"  needs: about {more:,.0f} more canary requests{eta}"]


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
