"""The HTML drift report: the table, and a plot per drifted column (reference against current).

Only the CLI imports this module: plotting stays out of `modelctl.core.drift` and its imports. The
plots are inline SVG written here, so the report is one self-contained file and needs no
plotting library.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from modelctl.core.drift.detect import DriftReport, FeatureDrift
from modelctl.core.drift.profile import SCORE_NAME, Profile

Floats = npt.NDArray[np.float64]

BINS = 40
WIDTH, HEIGHT, PAD = 560, 220, 36
REFERENCE_COLOUR, CURRENT_COLOUR = "#4c72b0", "#dd8452"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.25rem 0.6rem; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
tr.drifted td { background: #fdecea; font-weight: 600; }
figure { margin: 1.5rem 0; }
figcaption { font-weight: 600; margin-bottom: 0.3rem; }
"""


def render_html(
    report: DriftReport,
    profile: Profile,
    current: Floats,
    *,
    scores: Floats | None = None,
    title: str = "Drift report",
) -> str:
    """A self-contained HTML page: summary, per-column table, one plot per drifted column."""
    columns = {name: current[:, j] for j, name in enumerate(profile.feature_names)}
    if scores is not None:
        columns[SCORE_NAME] = scores
    tested = [*report.features, *([report.prediction] if report.prediction else [])]
    plots = [_figure(item, profile, columns[item.name]) for item in tested if item.drifted]
    verdict = (
        f"drift in {len(report.drifted)} of {len(tested)} columns: {', '.join(report.drifted)}"
        if report.drift_detected
        else f"no drift in {len(tested)} columns"
    )
    summary = (
        f"{report.rows_current:,} current rows against {report.rows_reference:,} reference rows "
        f"({'exact' if report.exact else 'sketched'} reference); {report.correction} correction at "
        f"alpha {report.alpha:g}; effect floor {report.effect_floor:g}."
    )
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p><strong>{html.escape(verdict)}</strong></p><p>{html.escape(summary)}</p>",
            _table(tested),
            *plots,
            "</body></html>",
        ]
    )


def _table(tested: Sequence[FeatureDrift]) -> str:
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "column",
            "test",
            "statistic",
            "p-value",
            "adjusted p",
            "effect size",
            "PSI",
            "missing",
            "drifted",
        )
    )
    rows = []
    for item in sorted(tested, key=lambda f: (f.p_adjusted, f.name)):
        cells = [
            html.escape(item.name),
            item.test,
            _number(item.statistic),
            _number(item.p_value),
            _number(item.p_adjusted),
            _number(item.effect_size),
            _number(item.psi),
            f"{item.missing_current:.1%}",
            "yes" if item.drifted else "no",
        ]
        css = ' class="drifted"' if item.drifted else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _figure(item: FeatureDrift, profile: Profile, values: Floats) -> str:
    finite = values[np.isfinite(values)]
    sketch = profile.sketch(item.name)
    if item.kind == "categorical":
        labels, reference, current = _category_shares(sketch.values, sketch.le - sketch.lt, finite)
        svg = bars(labels, reference, current)
    else:
        edges = _edges(sketch.quantile(np.array([0.005, 0.995])), finite)
        reference = np.diff(sketch.cdf(edges))
        current = np.histogram(finite, bins=edges)[0] / max(finite.size, 1)
        svg = steps(edges, reference, current)
    caption = (
        f"{item.name}: {item.test} statistic {_number(item.statistic)}, adjusted p {_number(item.p_adjusted)}, "
        f"effect size {_number(item.effect_size)}"
    )
    return f"<figure><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>"


def _edges(reference_range: Floats, current: Floats) -> Floats:
    low, high = float(reference_range[0]), float(reference_range[1])
    if current.size:
        low = min(low, float(np.quantile(current, 0.005)))
        high = max(high, float(np.quantile(current, 0.995)))
    if not high > low:
        high = low + 1.0
    edges: Floats = np.linspace(low, high, BINS + 1)
    return edges


def _category_shares(categories: Floats, counts: Floats, current: Floats) -> tuple[list[str], Floats, Floats]:
    known = np.searchsorted(np.sort(current), categories, side="right") - np.searchsorted(
        np.sort(current), categories, side="left"
    )
    unseen = current.size - known.sum()
    labels = [f"{c:g}" for c in categories] + (["unseen"] if unseen else [])
    reference = np.r_[counts, [0.0] * bool(unseen)] / max(counts.sum(), 1)
    shares = np.r_[known, [unseen] * bool(unseen)] / max(current.size, 1)
    return labels, reference, shares.astype(np.float64)


LEGEND = ("reference", "current")


def _frame(x_labels: tuple[str, str], top: float, legend: tuple[str, str] = LEGEND) -> list[str]:
    left, right, bottom = PAD, WIDTH - 8, HEIGHT - PAD
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="8" x2="{left}" y2="{bottom}" stroke="#888"/>',
        f'<text x="{left}" y="{bottom + 16}" font-size="11">{html.escape(x_labels[0])}</text>',
        f'<text x="{right}" y="{bottom + 16}" font-size="11" text-anchor="end">{html.escape(x_labels[1])}</text>',
        f'<text x="4" y="16" font-size="11">{top:.1%}</text>',
        f'<text x="{right}" y="18" font-size="11" text-anchor="end" fill="{REFERENCE_COLOUR}">{html.escape(legend[0])}</text>',
        f'<text x="{right}" y="32" font-size="11" text-anchor="end" fill="{CURRENT_COLOUR}">{html.escape(legend[1])}</text>',
    ]


def steps(edges: Floats, reference: Floats, current: Floats, legend: tuple[str, str] = LEGEND) -> str:
    """Both distributions as step outlines of their share per bin, an inline SVG.

    `edges` are the n + 1 bin edges, `reference` and `current` the n shares per bin of each side;
    `legend` names the two sides (the shadow report draws its score buckets with it too).
    """
    top = max(float(reference.max(initial=0)), float(current.max(initial=0)), 1e-12)
    x = PAD + (edges - edges[0]) / (edges[-1] - edges[0]) * (WIDTH - 8 - PAD)

    def outline(shares: Floats, colour: str) -> str:
        y = (HEIGHT - PAD) - shares / top * (HEIGHT - PAD - 24)
        points = [f"{x[0]:.1f},{HEIGHT - PAD}"]
        for i, level in enumerate(y):
            points += [f"{x[i]:.1f},{level:.1f}", f"{x[i + 1]:.1f},{level:.1f}"]
        points.append(f"{x[-1]:.1f},{HEIGHT - PAD}")
        return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(points)}"/>'

    parts = _frame((f"{edges[0]:.4g}", f"{edges[-1]:.4g}"), top, legend)
    parts += [outline(reference, REFERENCE_COLOUR), outline(current, CURRENT_COLOUR), "</svg>"]
    return "".join(parts)


def bars(labels: list[str], reference: Floats, current: Floats, legend: tuple[str, str] = LEGEND) -> str:
    """Side-by-side bars per category, an inline SVG: `reference` and `current` are each side's
    share per category of `labels` (same length); `legend` names the two sides."""
    top = max(float(reference.max(initial=0)), float(current.max(initial=0)), 1e-12)
    slot = (WIDTH - 8 - PAD) / max(len(labels), 1)
    parts = _frame(("", ""), top, legend)
    for i, label in enumerate(labels):
        for k, (share, colour) in enumerate(((reference[i], REFERENCE_COLOUR), (current[i], CURRENT_COLOUR))):
            height = share / top * (HEIGHT - PAD - 24)
            x = PAD + i * slot + slot * (0.1 + 0.4 * k)
            parts.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - PAD - height:.1f}" width="{slot * 0.4:.1f}" '
                f'height="{height:.1f}" fill="{colour}"/>'
            )
        parts.append(
            f'<text x="{PAD + (i + 0.5) * slot:.1f}" y="{HEIGHT - PAD + 16}" font-size="11" '
            f'text-anchor="middle">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}"
