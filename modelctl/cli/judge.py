"""`modelctl judge --snapshot FILE`: promote, hold or rollback, from one metrics snapshot;
`modelctl judge --replay COMMIT`: an analysis commit's decision recomputed from its snapshot.

The old spelling `modelctl canary judge` works for one more release, with a deprecation line on
stderr. `canary` is also the release command `modelctl canary <model> <version>`
(modelctl.cli.release); `canary judge` and `canary analyze` (modelctl.cli.analyze) are its
subcommands (`add_subcommands`).
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
    add_subcommands,
    progress,
    repo_root,
)
from modelctl.core.errors import UserError

if TYPE_CHECKING:
    from modelctl.core.analysis.judge import Decision
    from modelctl.core.analysis.metrics import Evidence

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
JUDGE_HELP = (
    "decide promote, hold or rollback from a canary metrics snapshot; "
    f"exit {EXIT_OK} promote, {EXIT_FINDING} rollback, {EXIT_HOLD} hold"
)
# The decision is the exit code, so a pipeline step can branch on it without parsing output.
EXIT_CODE = {"promote": EXIT_OK, "rollback": EXIT_FINDING, "hold": EXIT_HOLD}
DEPRECATED = (
    "warning: 'modelctl canary judge' is deprecated and goes in the next release; use 'modelctl judge'"
)


def register(sub: SubParsers) -> None:
    from modelctl.cli import analyze

    _add_judge(sub, run)
    add_subcommands(sub, "canary", {"judge": lambda s: _add_judge(s, run_deprecated), "analyze": analyze.add})


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
    decision = judge(read_snapshot(path), source=str(path))
    return Result(decision.to_dict(), format_decision(decision), EXIT_CODE[decision.action])


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
    if more is None:
        return ["  needs: better estimates; more requests alone would not pass them (early ones often move)"]
    eta = f" (about {duration_text(seconds)} at the current rate)" if seconds is not None else ""
    return [f"  needs: about {more:,.0f} more canary requests{eta}"]


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
