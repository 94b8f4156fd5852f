"""`modelctl shadow report`: how each shadow's predictions differ from the versions it mirrors.

`shadow` is also the release command `modelctl shadow <model> <version>`, so its parser is
wrapped as `canary`'s is (modelctl.cli.canary): `shadow report ...` goes to the report's parser.
The report reads; it changes nothing and exits 0 whatever it finds (it is evidence for a person,
not a gate).
"""

from __future__ import annotations

import argparse
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from modelctl.cli import Result, add_command, add_subcommands, progress, repo_root
from modelctl.cli.local import local_stack
from modelctl.core.errors import UserError
from modelctl.core.schema import duration_seconds
from modelctl.core.yamlio import write_atomic

if TYPE_CHECKING:
    from modelctl.api import ShadowResult
    from modelctl.core.analysis.shadow import ShadowReport, Test

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
HELP = "compare each shadow's predictions with its primary's on the mirrored traffic (reads only)"


def register(sub: SubParsers) -> None:
    add_subcommands(sub, "shadow", {"report": _add_report})


def _add_report(sub: SubParsers) -> argparse.ArgumentParser:
    parser = add_command(sub, "report", run, HELP)
    parser.add_argument("--stack", help="the stack (default: the one marked local: true, else dev)")
    parser.add_argument("--model", help="only this model's shadow")
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus' URL (default: the stack's setting)")
    parser.add_argument(
        "--prediction-log",
        action="append",
        metavar="FILE",
        help="JSON-lines prediction log of the primary and the shadow, e.g. saved 'kubectl logs' "
        "(repeatable; '-' reads standard input; default: a local stack's server logs)",
    )
    parser.add_argument(
        "--window",
        metavar="DURATION",
        help="look back this long (default: since the shadow started), e.g. 2h",
    )
    parser.add_argument("--html", metavar="FILE", help="also write an HTML report with plots")
    return parser


def run(args: argparse.Namespace) -> Result:
    from modelctl import api
    from modelctl.repo.state import read_state

    root = repo_root(args)
    stack = local_stack(read_state(root), args.stack)
    if args.html and not Path(args.html).parent.is_dir():
        raise UserError(args.html, "its folder does not exist", "create it first or pass another --html path")
    window = None if args.window is None else _window(args.window)
    progress(f"reading the shadows on {stack}")
    results = api.shadow_report(
        root,
        stack=stack,
        model=args.model,
        prometheus=args.prometheus,
        prediction_logs=_logs(args.prediction_log),
        window=window,
    )
    data: dict[str, object] = {"stack": stack, "reports": [r.to_json() for r in results]}
    if args.html:
        write_atomic(Path(args.html), render_html(results))
        data["html"] = args.html
    text = "\n\n".join(format_report(r) for r in results) or f"no model mirrors a version on {stack}"
    return Result(data, text)


def _window(text: str) -> float:
    try:
        return duration_seconds(text)
    except ValueError as exc:
        problem, _, fix = str(exc).rpartition("; ")  # the duration's own message ends with its fix
        raise UserError("--window", problem, fix) from None


def _logs(paths: list[str] | None) -> list[Path] | None:
    if paths is None:
        return None
    # '-' is standard input, e.g. `kubectl logs -l app=churn --tail=-1 | modelctl shadow report ...`.
    return [Path("/dev/stdin") if p == "-" else Path(p) for p in paths]


# ---------------------------------------------------------------- text


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.1%}"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1000:.3g} ms"


def _p(p_value: float) -> str:
    # Below double precision's resolution near 1, scipy's survival functions return 0.
    return "p < 1e-16" if p_value < 1e-16 else f"p = {p_value:.3g}"


def _test(test: Test) -> str:
    if test.p_value is None or test.statistic is None:
        return f"{test.name}: not enough data"
    return f"{test.name} {test.statistic:.3g}, {_p(test.p_value)}"


def _rows(report: ShadowReport) -> list[tuple[str, str, str]]:
    """(what, primary, shadow) rows shared by the terminal table and the HTML page."""
    rows = [("requests", f"{report.requests['primary']:,.0f}", f"{report.requests['shadow']:,.0f}")]
    rows += [
        (
            f"class {c.name}",
            f"{_pct(c.primary_rate)} ({c.primary:,.0f})",
            f"{_pct(c.shadow_rate)} ({c.shadow:,.0f})",
        )
        for c in report.classes
    ]
    for name in ("p50", "p99"):
        rows.append(
            (f"latency {name}", _ms(report.latency["primary"][name]), _ms(report.latency["shadow"][name]))
        )
    return rows


def _findings(report: ShadowReport) -> list[str]:
    lines = [
        f"classes: {_test(report.class_test)}",
        f"scores: {_test(report.score_test)}" + ("" if report.psi is None else f", PSI {report.psi:.3g}"),
    ]
    agreement = report.agreement
    if agreement is None:
        lines.append("agreement: no prediction log read (enable --prediction-log on the servers)")
    elif agreement.pairs:
        low, high = agreement.interval
        lines.append(
            f"agreement: {_pct(agreement.agreement)} of {agreement.pairs:,} requests both logged "
            f"(95% interval {_pct(low)} to {_pct(high)}); disagreement {_pct(1 - agreement.agreement)}"
        )
        more = agreement.positive_test.statistic or 0.0
        lines.append(
            f"the shadow predicts {report.positive_class} on {abs(more):.0f} "
            f"{'more' if more >= 0 else 'fewer'} of the same requests than the primary (McNemar "
            f"{_p(agreement.positive_test.p_value or 1.0)}); mean score difference "
            f"{agreement.mean_score_difference:+.3g}"
        )
    lines += [f"note: {note}" for note in report.notes]
    return lines


def _confusion(report: ShadowReport) -> list[list[str]]:
    """The confusion table, primary's classes down, shadow's across (first row: the header)."""
    if report.agreement is None or not report.agreement.pairs:
        return []
    names = [c.name for c in report.classes]
    table = [["primary \\ shadow", *names]]
    for p in names:
        row = report.agreement.confusion.get(p, {})
        table.append([p, *(f"{row.get(s, 0):,}" for s in names)])
    return table


def format_report(result: ShadowResult) -> str:
    report = result.report
    head = (
        f"{report.model} on {result.stack}: shadow {report.shadow} (mirrored {report.percent:g}%) against "
        f"{' + '.join(report.primary) or 'nothing serving'}, since {result.window_start:%Y-%m-%d %H:%M:%S %Z}"
    )
    table = [("", "primary", "shadow"), *_rows(report)]
    width = max(len(r[0]) for r in table)
    lines = [head, *(f"  {a:<{width}}  {b:>18}  {c:>18}" for a, b, c in table)]
    lines += [f"  {line}" for line in _findings(report)]
    confusion = _confusion(report)
    if confusion:
        first = max(len(r[0]) for r in confusion)
        lines.append("  confusion (rows both logged):")
        lines += ["    " + f"{r[0]:<{first}}" + "".join(f"  {c:>8}" for c in r[1:]) for r in confusion]
    return "\n".join(lines)


# ---------------------------------------------------------------- HTML


def render_html(results: list[ShadowResult]) -> str:
    """One self-contained page: per shadow, the table, the findings, class and score plots."""
    import numpy as np

    from modelctl.core.drift.html import STYLE, bars

    sections = []
    for result in results:
        report = result.report
        legend = (f"primary {'+'.join(report.primary)}", f"shadow {report.shadow}")
        rows = "".join(
            f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
            for a, b, c in _rows(report)
        )
        names = [c.name for c in report.classes]
        class_bars = bars(
            names,
            np.nan_to_num([c.primary_rate for c in report.classes]),
            np.nan_to_num([c.shadow_rate for c in report.classes]),
            legend,
        )
        sections += [
            f"<h2>{html.escape(format_report(result).splitlines()[0])}</h2>",
            f"<table><thead><tr><th></th><th>primary</th><th>shadow</th></tr></thead><tbody>{rows}</tbody></table>",
            "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in _findings(report)) + "</ul>",
            f"<figure><figcaption>predicted classes (share of rows)</figcaption>{class_bars}</figure>",
            *_score_plot(report, legend),
            *_confusion_html(report),
        ]
    title = "Shadow report"
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{title}</title><style>{STYLE}</style></head><body>",
            f"<h1>{title}</h1>",
            *sections,
            "</body></html>",
        ]
    )


def _score_plot(report: ShadowReport, legend: tuple[str, str]) -> list[str]:
    import numpy as np

    from modelctl.core.drift.html import steps

    finite = [b for b in report.score_le if math.isfinite(b)]
    primary, shadow = (np.array(report.scores[side][: len(finite)]) for side in ("primary", "shadow"))
    if not finite or not primary.sum() or not shadow.sum():
        return []
    edges = np.r_[min(0.0, finite[0]), finite]
    svg = steps(edges, primary / primary.sum(), shadow / shadow.sum(), legend)
    caption = f"positive-class score (share of rows per bucket): {_test(report.score_test)}"
    return [f"<figure><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>"]


def _confusion_html(report: ShadowReport) -> list[str]:
    table = _confusion(report)
    if not table:
        return []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    return [
        "<p>confusion on the requests both versions logged</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
    ]
