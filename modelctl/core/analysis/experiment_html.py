"""The HTML A/B report: per experiment, the decision, the table, and a plot per metric of the
difference treatment - control over time with its always-valid interval (each look a point with
its interval bar, the looks joined by a line and a band: one look is already a point and a bar).

Only the CLI imports this module. Inline SVG in the drift report's style (its page style, plot
size and colours), so the report is one self-contained file and needs no plotting library.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from modelctl.core.analysis.experiment import ExperimentDecision, MetricResult, Point
from modelctl.core.drift.html import CURRENT_COLOUR, HEIGHT, PAD, REFERENCE_COLOUR, STYLE, WIDTH

BAND_COLOUR = "#dd845233"


def render_html(decisions: Sequence[ExperimentDecision], title: str = "A/B experiments") -> str:
    """A self-contained HTML page with one section per experiment."""
    sections = [_section(d) for d in decisions] or ["<p>No A/B experiment to analyze.</p>"]
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            *sections,
            "</body></html>",
        ]
    )


def _section(d: ExperimentDecision) -> str:
    head = f"{d.model} on {d.stack}: {d.outcome}" + (f" ({d.winner})" if d.winner else "")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in [*d.reasons, *d.warnings])
    guardrails = "".join(f"<li>{html.escape(g.detail)}</li>" for g in d.guardrails)
    coverage = ", ".join(f"{v} {'n/a' if c is None else f'{c:.1%}'}" for v, c in d.coverage.items())
    plots = [_figure(metric, points, d.effect) for metric, points in d.series.items()]
    return "\n".join(
        [
            f"<h2>{html.escape(head)}</h2>",
            f"<ul>{reasons}</ul>",
            _table(d),
            f"<p>Guardrails:</p><ul>{guardrails}</ul>" if guardrails else "",
            f"<p>Label coverage: {html.escape(coverage)}. alpha {d.alpha:g}, smallest effect {d.effect:g}; "
            f"snapshot sha256 {d.snapshot_sha256[:12]}.</p>",
            *plots,
        ]
    )


def _table(d: ExperimentDecision) -> str:
    header = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in (
            "metric",
            f"{d.control} (control)",
            f"{d.treatment} (treatment)",
            "difference",
            "interval",
            "verdict",
        )
    )
    return f"<table><tr>{header}</tr>{''.join(_row(r) for r in d.metrics)}</table>"


def _row(r: MetricResult) -> str:
    cells = (
        r.metric,
        f"{_number(r.control)} of {r.control_labels:,.0f}",
        f"{_number(r.treatment)} of {r.treatment_labels:,.0f}",
        _number(r.difference),
        f"[{_number(r.lower)}, {_number(r.upper)}]",
        r.verdict or "-",
    )
    marked = ' class="drifted"' if r.verdict in ("treatment", "control") else ""
    return f"<tr{marked}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _figure(metric: str, points: list[Point], effect: float) -> str:
    """The difference over the looks, its interval as a band, zero and +-effect as lines."""
    shown = [p for p in points if math.isfinite(p.lower) and math.isfinite(p.upper)]
    caption = f"{metric}: treatment - control over time, with its always-valid interval"
    if not shown:
        return f"<figure><figcaption>{html.escape(caption)}</figcaption><p>no labels yet</p></figure>"
    top = max(*(p.upper for p in shown), effect) * 1.1
    bottom = min(*(p.lower for p in shown), -effect) * 1.1
    left, right, base = PAD, WIDTH - 8, HEIGHT - PAD

    def x(i: int) -> float:
        # One look stands in the middle: its point and interval, not an empty plot.
        return left + (right - left) * (i / (len(shown) - 1) if len(shown) > 1 else 0.5)

    def y(value: float) -> float:
        return base - (value - bottom) / (top - bottom) * (base - 16)

    band = [f"{x(i):.1f},{y(p.upper):.1f}" for i, p in enumerate(shown)]
    band += [f"{x(i):.1f},{y(p.lower):.1f}" for i, p in reversed(list(enumerate(shown)))]
    line = " ".join(f"{x(i):.1f},{y(p.difference):.1f}" for i, p in enumerate(shown))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f'<polygon fill="{BAND_COLOUR}" stroke="none" points="{" ".join(band)}"/>',
        *(
            f'<line x1="{left}" y1="{y(level):.1f}" x2="{right}" y2="{y(level):.1f}" stroke="{colour}" '
            f'stroke-dasharray="{dash}"/><text x="4" y="{y(level) + 4:.1f}" font-size="11">{level:+.3g}</text>'
            for level, colour, dash in (
                (0.0, "#888", "0"),
                (effect, REFERENCE_COLOUR, "4"),
                (-effect, REFERENCE_COLOUR, "4"),
            )
        ),
        f'<polyline fill="none" stroke="{CURRENT_COLOUR}" stroke-width="1.5" points="{line}"/>',
        # Each look: the estimate as a point, its interval as a bar.
        *(
            f'<line x1="{x(i):.1f}" y1="{y(p.upper):.1f}" x2="{x(i):.1f}" y2="{y(p.lower):.1f}" '
            f'stroke="{CURRENT_COLOUR}"/><circle cx="{x(i):.1f}" cy="{y(p.difference):.1f}" r="3" '
            f'fill="{CURRENT_COLOUR}"><title>{html.escape(_look(p))}</title></circle>'
            for i, p in enumerate(shown)
        ),
        f'<text x="{left}" y="{base + 16}" font-size="11">{html.escape(_when(shown[0]))}</text>',
        f'<text x="{right}" y="{base + 16}" font-size="11" text-anchor="end">{html.escape(_when(shown[-1]))}</text>',
        "</svg>",
    ]
    return f"<figure><figcaption>{html.escape(caption)}</figcaption>{''.join(parts)}</figure>"


def _look(p: Point) -> str:
    return f"{_when(p)}: {_number(p.difference)} in [{_number(p.lower)}, {_number(p.upper)}]"


def _when(p: Point) -> str:
    return f"{p.at[:16].replace('T', ' ')} UTC, {p.labels:,.0f} labels"


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"
