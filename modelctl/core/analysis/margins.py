"""The margins a canary may trail its baseline by: one definition for the judge and the alert.

The canary judge's metrics (`modelctl.core.analysis.metrics`) test non-inferiority within these
margins; the `ModelCanaryWorseThanStable` alert (`infra/alert_rules.py`) fires beyond the same
ones, so the page and the automatic decision never disagree about what "worse" means.
"""

from __future__ import annotations

from modelctl.core.schema import Analysis


def error_margin(settings: Analysis, baseline_rate: float) -> float:
    """The non-inferiority margin on the error rate (a fraction, like the rates).

    The larger of `error_margin` (absolute) and `error_margin_relative` x the baseline's rate:
    half a point is a tenth of a 5% rate, which too little data would ever show.
    """
    return max(settings.error_margin, settings.error_margin_relative * baseline_rate)


def error_margin_promql(settings: Analysis, baseline_rate: str) -> str:
    """`error_margin` as PromQL over the expression `baseline_rate` (the stable error ratio)."""
    return f"clamp_min({settings.error_margin_relative:g} * ({baseline_rate}), {settings.error_margin:g})"


def latency_ratio(settings: Analysis) -> float:
    """How many times the baseline's p99 the canary's may be: 1 + `latency_margin`."""
    return 1 + settings.latency_margin
