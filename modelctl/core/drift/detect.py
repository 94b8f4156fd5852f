"""Drift detection: compare a window of current rows with the reference profile."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from modelctl.core.drift.profile import (
    SCORE_NAME,
    ColumnProfile,
    Floats,
    Profile,
    as_rows,
    bin_counts,
    map_columns,
    sorted_finite,
)
from modelctl.core.drift.statistics import (
    adjust_pvalues,
    category_counts,
    category_test,
    cohens_h,
    cohens_w,
    ks_pvalue,
    ks_statistic,
    missing_rate_p,
    psi_from_counts,
    wasserstein,
)
from modelctl.core.schema import Correction

# Relative size of round-off: float32 carries about 7 significant digits, so values that agree
# to 6 next to the reference's magnitude are the same value stored twice.
ROUND_OFF = 1e-6

# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's (or the prediction score's) comparison with its reference."""

    name: str
    kind: str
    test: str
    statistic: float
    p_value: float
    p_adjusted: float
    effect_size: float
    psi: float
    drifted: bool
    count: int
    missing_reference: float
    missing_current: float
    ks_error_bound: float

    def to_dict(self) -> dict[str, Any]:
        return {key: _json_number(value) for key, value in self.__dict__.items()}


@dataclass(frozen=True)
class DriftReport:
    """The outcome of `detect_drift`; `to_dict()` is its JSON form."""

    drift_detected: bool
    alpha: float
    correction: str
    effect_floor: float
    rows_reference: int
    rows_current: int
    exact: bool
    features: tuple[FeatureDrift, ...]
    prediction: FeatureDrift | None

    @property
    def drifted(self) -> list[str]:
        """Names of the drifted features (and "prediction" when the score drifted)."""
        tested = [*self.features, *([self.prediction] if self.prediction else [])]
        return [f.name for f in tested if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift_detected": self.drift_detected,
            "drifted": self.drifted,
            "alpha": self.alpha,
            "correction": self.correction,
            "effect_floor": self.effect_floor,
            "rows_reference": self.rows_reference,
            "rows_current": self.rows_current,
            "reference": "exact" if self.exact else "sketch",
            "features": [f.to_dict() for f in self.features],
            "prediction": self.prediction.to_dict() if self.prediction else None,
        }


@dataclass(frozen=True)
class _Comparison:
    statistic: float
    p_value: float
    effect_size: float
    psi: float
    count: int
    missing: float
    error_bound: float
    test: str


def detect_drift(
    profile: Profile,
    current: npt.ArrayLike,
    *,
    scores: npt.ArrayLike | None = None,
    alpha: float = 0.05,
    correction: Correction = "holm",
    effect_floor: float = 0.0,
    workers: int | None = None,
) -> DriftReport:
    """Compare `current` (rows x features, in the profile's feature order) with the profile.

    `scores`: the model's positive-class probabilities on the same rows, compared with the
    profile's (prediction drift; needs a profile fitted with scores). `alpha` is the
    family-wise error rate (Holm, Bonferroni) or false discovery rate (Benjamini–Hochberg
    "bh") across all tested columns. `effect_floor`: the smallest effect size (Wasserstein
    distance in reference standard deviations; Cohen's w for categories) that counts as drift.
    `workers`: threads (default: one per core).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    matrix = as_rows(current, len(profile.feature_names))
    columns = profile._columns()

    def compare(j: int) -> _Comparison:
        return _compare(columns[j], matrix[:, j])

    results = map_columns(compare, range(len(columns)), workers, matrix.size)
    names: list[str] = list(profile.feature_names)
    kinds: list[str] = list(profile.kinds)
    if scores is not None:
        if profile.score is None:
            raise ValueError("the profile holds no prediction scores; fit it with scores=")
        score_column = np.asarray(scores, dtype=np.float64).ravel()
        results.append(_compare(profile.score, score_column))
        columns.append(profile.score)
        names.append(SCORE_NAME)
        kinds.append("prediction")
    adjusted = adjust_pvalues(np.array([r.p_value for r in results]), correction)
    tested = [
        FeatureDrift(
            name=name,
            kind=kind,
            test=result.test,
            statistic=result.statistic,
            p_value=result.p_value,
            p_adjusted=float(p_adj),
            effect_size=result.effect_size,
            psi=result.psi,
            drifted=bool(p_adj <= alpha and result.effect_size >= effect_floor),
            count=result.count,
            missing_reference=_fraction(column.missing, column.missing + column.count),
            missing_current=result.missing,
            ks_error_bound=result.error_bound,
        )
        for name, kind, result, p_adj, column in zip(names, kinds, results, adjusted, columns, strict=True)
    ]
    prediction = tested.pop() if scores is not None else None
    return DriftReport(
        drift_detected=any(f.drifted for f in tested) or bool(prediction and prediction.drifted),
        alpha=alpha,
        correction=correction,
        effect_floor=effect_floor,
        rows_reference=profile.rows,
        rows_current=matrix.shape[0],
        exact=profile.exact,
        features=tuple(tested),
        prediction=prediction,
    )


def _compare(reference: ColumnProfile, column: Floats) -> _Comparison:
    ordered, missing = sorted_finite(column)
    if reference.kind == "categorical":
        result = _compare_categories(reference, ordered)
    else:
        result = _compare_numeric(reference, ordered)
    p_missing = missing_rate_p(reference.missing, reference.count, missing, ordered.size)
    if p_missing is None:
        return result
    rates = (
        _fraction(reference.missing, reference.missing + reference.count),
        _fraction(missing, column.size),
    )
    # Both tests join the family as one p-value (Bonferroni over the two); the one with the
    # stronger evidence names the feature's test, so a column that only went missing reads as a
    # missing-rate change, never as a distribution test on the values left.
    p_value = min(1.0, 2 * min(result.p_value, p_missing))
    effect = float(np.nanmax([result.effect_size, cohens_h(*rates)]))
    if p_missing < result.p_value or ordered.size == 0:
        result = replace(result, test="missing", statistic=rates[1] - rates[0])
    return replace(result, p_value=p_value, effect_size=effect, missing=rates[1])


def _compare_numeric(reference: ColumnProfile, ordered: Floats) -> _Comparison:
    sketch = reference.sketch
    if ordered.size == 0 or sketch.n == 0:
        return _Comparison(math.nan, 1.0, math.nan, math.nan, int(ordered.size), 0.0, 0.0, "ks")
    tolerance = _round_off(reference)
    if reference.maximum - reference.minimum <= tolerance:
        return _compare_constant(reference, ordered, tolerance)
    statistic = ks_statistic(sketch, ordered)
    bound = sketch.error_bound
    p_value = ks_pvalue(max(statistic - bound, 0.0), sketch.n, ordered.size)
    return _Comparison(
        statistic=statistic,
        p_value=p_value,
        effect_size=wasserstein(sketch, ordered) / max(reference.std, tolerance),
        psi=_psi(reference, ordered),
        count=int(ordered.size),
        missing=0.0,
        error_bound=bound,
        test="ks",
    )


def _round_off(reference: ColumnProfile) -> float:
    """Differences this small next to the reference's magnitude are round-off, not change."""
    return ROUND_OFF * max(abs(reference.minimum), abs(reference.maximum))


def _compare_constant(reference: ColumnProfile, ordered: Floats, tolerance: float) -> _Comparison:
    """A reference without spread (all values equal up to round-off): the share of current values
    away from it, by Fisher's exact test against the reference's none; effect size Cohen's h."""
    low, high = reference.minimum - tolerance, reference.maximum + tolerance
    away = int(np.searchsorted(ordered, low, "left") + ordered.size - np.searchsorted(ordered, high, "right"))
    share = away / ordered.size
    p_value = float(stats.fisher_exact([[0, reference.count], [away, ordered.size - away]]).pvalue)
    return _Comparison(share, p_value, cohens_h(0.0, share), math.nan, int(ordered.size), 0.0, 0.0, "range")


def _compare_categories(reference: ColumnProfile, ordered: Floats) -> _Comparison:
    sketch = reference.sketch
    ref_counts = np.r_[sketch.le - sketch.lt, 0.0]
    cur_counts = category_counts(sketch.values, ordered)
    test, statistic, p_value = category_test(ref_counts, cur_counts)
    return _Comparison(
        statistic=statistic,
        p_value=p_value,
        effect_size=cohens_w(ref_counts, cur_counts),
        psi=psi_from_counts(ref_counts, cur_counts),
        count=int(ordered.size),
        missing=0.0,
        error_bound=0.0,
        test=test,
    )


def _psi(reference: ColumnProfile, ordered: Floats) -> float:
    if np.isnan(reference.psi_edges).any():
        return math.nan
    current = bin_counts(ordered, reference.psi_edges)
    return psi_from_counts(reference.psi_reference.astype(np.float64), current.astype(np.float64))


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
