"""Drift: is the data a version sees now distributed like the data it was checked on?

The reference side is a `Profile`, fitted once by the pipeline (`fit_profile`) and saved next to
the model (`artifacts/<model>/profile.npz`); `detect_drift` compares a window of current rows
with it, feature by feature, and corrects for testing many features at once.

Per numeric feature:

- the two-sample Kolmogorov–Smirnov statistic D and its p-value (`ks_pvalue`: the exact
  small-sample distribution up to an effective size of 2000, Smirnov's limit above).
  The reference side is either exact (every distinct value with its count: D equals
  `scipy.stats.ks_2samp`'s to rounding) or a sketch: the order statistics at `sketch_points`
  evenly spaced ranks, with their exact counts. Between sketch points the reference CDF is
  interpolated, and is known to lie within `Sketch.error_bound` < 1/(sketch_points - 1) of
  the truth everywhere, so the sketch's D is within that bound of the exact D (reported per
  feature as `ks_error_bound`). A sketch's p-value is computed from D - bound, so it is never
  smaller than the exact p-value.
- the Wasserstein-1 distance in reference standard deviations, the effect size: how far the
  distribution moved, in units a person can judge (0.1 = a tenth of a standard deviation).
- the population stability index on 10 quantile bins, reported for familiarity. The bin edges
  are thresholds estimated from the reference, so they are estimated out of sample: on a random
  half of the reference, with the reference proportions counted on the other half (counting on
  the same half would make every reference proportion exactly 1/10 and understate PSI's noise).

A numeric feature whose reference has no spread (its values agree up to round-off, a millionth of
their magnitude) is tested on the share of current values away from that value (Fisher's exact
test, test "range"), so round-off never reads as a huge effect.

Per categorical feature (codes stored as numbers): the chi-squared test on the 2 x K table of
category counts (unseen categories pooled into one column) where every category expects at least
5 current rows (Cochran's rule), Fisher's exact test per category (Bonferroni-combined) below that,
so one row or a handful is never "drift" by an approximation; Cohen's w as the effect size.

A feature's missing values (NaN, +-inf) are left out of the distribution tests; when either
side has some, Fisher's exact test on the missing rate joins the feature's test (the smaller
p-value, Bonferroni-doubled; the effect size is then the larger of the two, the missing rate's
as Cohen's h); when the missing rate is the stronger evidence the feature's test reads "missing"
and its statistic is the change in the missing rate. The p-values of all features, and of the prediction score when
given, are corrected together (Holm by default, Benjamini–Hochberg as an option); a feature
drifts when its corrected p-value is at most alpha and its effect size reaches the optional
practical floor, so that very large windows do not flag trivial shifts.

Everything is vectorized numpy over sorted columns, one column at a time, on a thread per core
(numpy releases the GIL while sorting and searching): the memory used beyond the caller's window
is a few columns, never a copy of the window.

The package, by the part each user needs (the public names below are the package's face):

- `profile`: `Profile`, `Sketch`, `fit_profile`, the `.npz` format (the pipeline's profile stage)
- `statistics`: `ks_statistic`, `ks_pvalue`, `adjust_pvalues`, chi-squared, PSI, Wasserstein
  (detection and the canary judge)
- `detect`: `detect_drift` and its `DriftReport` (`modelctl drift`)
- `window`: `DriftWindow`, the server's streaming window
- `html`: the report page (only the CLI loads it)

Names load on first use, so importing `modelctl.core.drift.profile` (the profile stage) runs
neither detection nor scipy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelctl.core.drift.detect import DriftReport, FeatureDrift, detect_drift
    from modelctl.core.drift.profile import SCORE_NAME, ColumnProfile, Profile, Sketch, fit_profile
    from modelctl.core.drift.statistics import adjust_pvalues, ks_pvalue, ks_statistic
    from modelctl.core.drift.window import DriftWindow

_HOME = {
    "SCORE_NAME": "profile",
    "ColumnProfile": "profile",
    "Profile": "profile",
    "Sketch": "profile",
    "fit_profile": "profile",
    "adjust_pvalues": "statistics",
    "ks_pvalue": "statistics",
    "ks_statistic": "statistics",
    "DriftReport": "detect",
    "FeatureDrift": "detect",
    "detect_drift": "detect",
    "DriftWindow": "window",
}
__all__ = [
    "SCORE_NAME",
    "ColumnProfile",
    "DriftReport",
    "DriftWindow",
    "FeatureDrift",
    "Profile",
    "Sketch",
    "adjust_pvalues",
    "detect_drift",
    "fit_profile",
    "ks_pvalue",
    "ks_statistic",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
