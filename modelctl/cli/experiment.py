"""`modelctl ab analyze` and `modelctl ab plan`: A/B experiments decided on ground truth.

`ab` is also the release command `modelctl ab <model> --split ...` (modelctl.cli.release); as for
`canary analyze`, arguments starting with `analyze` or `plan` go to these parsers and all others
to the release parser, unchanged.

Exit codes (modelctl.cli): 0 every experiment concluded (a winner, or no meaningful difference)
or none to analyze, 3 at least one continues (needs more labels or time), 1 an error.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from modelctl.cli import (
    EXIT_HOLD,
    EXIT_OK,
    Result,
    add_command,
    add_lock_timeout,
    add_subcommands,
    progress,
    repo_root,
)
from modelctl.core.errors import UserError

if TYPE_CHECKING:
    from modelctl.api import Experiment
    from modelctl.core.analysis.experiment import ExperimentDecision, MetricResult, Plan

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
ANALYZE_HELP = (
    "decide each A/B experiment from its feedback labels in Prometheus; a winner takes 100% by one "
    f"commit with its snapshot; exit {EXIT_OK} concluded, {EXIT_HOLD} continue"
)
PLAN_HELP = "labelled requests (and days at the model's traffic) an A/B experiment needs to detect an effect"
SECONDS_PER_DAY = 86400.0


def register(sub: SubParsers) -> None:
    add_subcommands(sub, "ab", {"analyze": _add_analyze, "plan": _add_plan})


def _add_analyze(sub: SubParsers) -> argparse.ArgumentParser:
    parser = add_command(sub, "analyze", run_analyze, ANALYZE_HELP)
    parser.add_argument("--stack", help="the stack to analyze (default: every stack)")
    parser.add_argument("--model", help="only this model's experiment")
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus' URL (default: the stack's setting)")
    parser.add_argument("--dry-run", action="store_true", help="print the table only; commit nothing")
    parser.add_argument("--html", metavar="FILE", help="also write an HTML report with plots over time")
    add_lock_timeout(parser)
    return parser


def _add_plan(sub: SubParsers) -> argparse.ArgumentParser:
    from modelctl.core.schema import EXPERIMENT_METRICS

    parser = add_command(sub, "plan", run_plan, PLAN_HELP)
    parser.add_argument("--metric", required=True, choices=EXPERIMENT_METRICS, help="the primary metric")
    parser.add_argument("--baseline", required=True, type=float, help="the control's value (0.9 for 90%%)")
    parser.add_argument("--effect", required=True, type=float, help="the smallest difference worth detecting")
    parser.add_argument(
        "--split",
        metavar="V=W,V=W",
        help="control first, then treatment (default 50/50), e.g. v1.0.0=80,v1.1.0=20",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="the experiment's alpha (default 0.05)")
    parser.add_argument(
        "--power", type=float, default=0.8, help="share of experiments concluded by then (0.8)"
    )
    parser.add_argument("--sd", type=float, help="for --metric value: its standard deviation per request")
    parser.add_argument("--stack", help="read the model's current traffic from this stack's Prometheus")
    parser.add_argument("--model", help="the model whose traffic to read")
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus' URL (default: the stack's setting)")
    parser.add_argument(
        "--labels-per-day", type=float, help="the label rate to plan with instead of Prometheus'"
    )
    return parser


# ---------------------------------------------------------------- analyze


def run_analyze(args: argparse.Namespace) -> Result:
    from modelctl import api
    from modelctl.cli.analysis import applied_data
    from modelctl.repo.state import read_state

    root = repo_root(args)
    stacks = [args.stack] if args.stack else sorted(read_state(root).stacks)
    results: list[Experiment] = []
    for stack in stacks:
        progress(f"analyzing the A/B experiments on {stack}")
        results += api.ab_analyze(
            root,
            stack=stack,
            model=args.model,
            prometheus=args.prometheus,
            dry_run=args.dry_run,
            lock_timeout=args.lock_timeout,
        )
    if args.html:
        _write_html(Path(args.html), results)
    code = EXIT_HOLD if any(r.outcome == "continue" for r in results) else EXIT_OK
    # The shape of `canary analyze --json`: one object per release analyzed, under "analyses".
    return Result(
        {"analyses": [applied_data(r, args.dry_run) for r in results]}, _text(results, args.dry_run), code
    )


def _write_html(path: Path, results: list[Experiment]) -> None:
    from modelctl.core.analysis.experiment_html import render_html
    from modelctl.core.yamlio import write_atomic

    write_atomic(path, render_html([r.decision for r in results]))
    progress(f"wrote {path}")


def _text(results: list[Experiment], dry_run: bool) -> str:
    from modelctl.cli.analysis import applied_head

    if not results:
        return "no A/B experiment to analyze"
    blocks = []
    for result in results:
        blocks.append(f"{applied_head(result, dry_run)}\n{format_experiment(result.decision)}")
    return "\n\n".join(blocks)


def format_experiment(decision: ExperimentDecision) -> str:
    """The decision as a terminal table: reasons, per-metric rows, guardrails, coverage."""
    level = f"{1 - decision.alpha:.0%}"
    arms = (f"{decision.control} (control)", f"{decision.treatment} (treatment)")
    lines = [
        f"{decision.model} on {decision.stack}: {decision.outcome.upper()}"
        + (f" {decision.winner}" if decision.winner else "")
        + f" (alpha {decision.alpha:g}, smallest effect {decision.effect:g}, snapshot {decision.taken_at})",
        *(f"  - {reason}" for reason in decision.reasons),
        *(f"  ! {warning}" for warning in decision.warnings),
        *_needs(decision),
        "",
        f"{'metric':<10}  {arms[0]:<24}  {arms[1]:<24}  {'difference':>10}  {level + ' interval (always valid)':<26}  verdict",
    ]
    lines += [_row(r) for r in decision.metrics]
    lines += [f"guardrail {g.detail}" for g in decision.guardrails]
    coverage = ", ".join(
        f"{v} {_share(c)} ({decision.labelled[v]:,.0f} of {decision.requests[v]:,.0f})"
        for v, c in decision.coverage.items()
    )
    delay = ", ".join(f"{v} {_delay(d)}" for v, d in decision.label_delay_seconds.items())
    lines += [
        f"label coverage: {coverage}; label delay: {delay}",
        "",
        f"snapshot sha256 {decision.snapshot_sha256}",
    ]
    return "\n".join(lines)


def _row(r: MetricResult) -> str:
    control = f"{_value(r.control)} of {r.control_labels:,.0f}"
    treatment = f"{_value(r.treatment)} of {r.treatment_labels:,.0f}"
    interval = f"[{_signed(r.lower)}, {_signed(r.upper)}]"
    return f"{r.metric:<10}  {control:<24}  {treatment:<24}  {_signed(r.difference):>10}  {interval:<26}  {r.verdict or '-'}"


def _needs(decision: ExperimentDecision) -> list[str]:
    if not decision.needs:
        return []
    more, seconds = decision.needs["labels"], decision.needs["seconds"]
    if more is None:
        return ["  needs: unknown until both arms have labels"]
    if more == 0 and seconds is not None:
        return [f"  needs: no more labels; about {_days(seconds)} more of its min_duration"]
    eta = f" (about {_days(seconds)} at the current label rate)" if seconds is not None else ""
    return [f"  needs: about {more:,.0f} more labelled requests{eta}"]


def _value(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def _signed(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.4f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _delay(seconds: float | None) -> str:
    from modelctl.core.releases import format_duration

    return "unknown" if seconds is None else format_duration(seconds)


def _days(seconds: float) -> str:
    from modelctl.core.analysis.judge import duration_text

    days = seconds / SECONDS_PER_DAY
    return f"{days:,.1f} days" if days >= 1 else duration_text(seconds)


# ---------------------------------------------------------------- plan


def run_plan(args: argparse.Namespace) -> Result:
    from modelctl.core.analysis import experiment

    share = _treatment_share(args.split)
    rate, rate_source = _label_rate(args)
    plan = experiment.plan(
        args.metric,
        args.baseline,
        args.effect,
        share_treatment=share,
        alpha=_probability(args.alpha, "--alpha"),
        power=_probability(args.power, "--power"),
        value_sd=args.sd,
        labels_per_second=rate,
    )
    return Result({**plan.to_dict(), "rate_source": rate_source}, _plan_text(plan, rate_source), EXIT_OK)


def _treatment_share(text: str | None) -> float:
    from modelctl.core.releases import parse_split

    if text is None:
        return 0.5
    split = list(parse_split(text).values())
    if len(split) != 2 or sum(split) != 100 or min(split) < 1:
        raise UserError(
            "--split", f"{text!r} is not a two-arm split summing to 100", "write it like v1.0.0=50,v1.1.0=50"
        )
    return split[1] / 100


def _probability(value: float, flag: str) -> float:
    if not 0 < value < 1:
        raise UserError(flag, f"{value:g} is not between 0 and 1", "give e.g. 0.05 for alpha, 0.8 for power")
    return value


def _label_rate(args: argparse.Namespace) -> tuple[float | None, str]:
    """Labels per second and where the figure came from (the flag, Prometheus, or unknown)."""
    from modelctl import api

    if args.labels_per_day is not None:
        return args.labels_per_day / SECONDS_PER_DAY, "--labels-per-day"
    if not (args.stack and args.model):
        return None, "unknown (pass --stack and --model to read it from Prometheus, or --labels-per-day)"
    try:
        rates = api.ab_traffic(repo_root(args), args.stack, args.model, args.prometheus)
    except UserError as exc:
        return None, f"unknown (Prometheus: {exc.problem})"
    if rates["labels"] > 0:
        return rates["labels"], f"{args.model}'s labels on {args.stack} over the last hour (Prometheus)"
    if rates["requests"] > 0:
        return rates[
            "requests"
        ], f"{args.model}'s requests on {args.stack} over the last hour, as if every one were labelled"
    return None, f"unknown ({args.model} had no traffic on {args.stack} in the last hour)"


def _plan_text(plan: Plan, rate_source: str) -> str:
    if plan.labels is None:
        return "the effect can never be detected with these settings"
    lines = [
        f"{plan.metric}: to detect {plan.baseline:g} -> {plan.baseline + plan.effect:g} (effect {plan.effect:g}) "
        f"at alpha {plan.alpha:g} with always-valid intervals (a look as often as you like):",
        f"  {plan.labels:,} labelled requests ({plan.per_arm['control']:,} control, {plan.per_arm['treatment']:,} treatment, "
        f"treatment share {plan.share_treatment:.0%}): by then at least {plan.power:.0%} of such experiments have concluded",
    ]
    if plan.seconds is not None and plan.labels_per_second:
        lines.append(
            f"  about {_days(plan.seconds)} at {plan.labels_per_second * SECONDS_PER_DAY:,.0f} labels a day ({rate_source})"
        )
    else:
        lines.append(f"  days needed: {rate_source}")
    return "\n".join(lines)
