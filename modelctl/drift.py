"""Drift detection: is the data a version sees now distributed like the data it was checked on?

The reference side is a `Profile`, fitted once by the pipeline (`fit_profile`) and saved next to
the model (`artifacts/<model>/profile.npz`); `detect_drift` compares a window of current rows
with it, feature by feature, and corrects for testing many features at once.

Per numeric feature:

- the two-sample Kolmogorov–Smirnov statistic D and its asymptotic p-value (`ks_pvalue`).
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

Per categorical feature (codes stored as numbers): the chi-squared test on the 2 x K table of
category counts (unseen categories pooled into one column), with Cohen's w as the effect size.

A feature's missing values (NaN, +-inf) are left out of the distribution tests; when either
side has some, a two-proportion test on the missing rate joins the feature's test (the smaller
p-value, Bonferroni-doubled; the effect size is then the larger of the two, the missing rate's
as Cohen's h). The p-values of all features, and of the prediction score when
given, are corrected together (Holm by default, Benjamini–Hochberg as an option); a feature
drifts when its corrected p-value is at most alpha and its effect size reaches the optional
practical floor, so that very large windows do not flag trivial shifts.

Everything is vectorized numpy over sorted columns, one column at a time, on a thread per core
(numpy releases the GIL while sorting and searching): the memory used beyond the caller's window
is a few columns, never a copy of the window.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from modelctl.schema import Correction

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Kind = Literal["numeric", "categorical"]

FORMAT = "modelctl.drift.profile/1"
DEFAULT_SKETCH_POINTS = 4097
PSI_BINS = 10
# Fixed, so that fitting the same reference twice gives the same bytes.
SPLIT_SEED = 20261101
MAX_CATEGORIES = 65536
# The earliest time a zip entry can carry: no wall-clock time ever reaches the file.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Below this many values per call, threads cost more than they save.
PARALLEL_MIN_VALUES = 400_000
SCORE_NAME = "prediction"
EXACT_PVALUE_MAX_N = 2000
_T = TypeVar("_T")


# ---------------------------------------------------------------- one column's reference


@dataclass(frozen=True, eq=False)
class Sketch:
    """A column's reference distribution: distinct values with exact counts at and below them.

    `values` are sorted distinct reference values (all of them when exact, otherwise the
    values at evenly spaced ranks, always including the minimum and the maximum); `le[j]` and
    `lt[j]` count the reference values <= and < `values[j]`; `n` is the non-missing count.
    """

    values: Floats
    le: Floats
    lt: Floats
    n: int

    @classmethod
    def of_sorted(cls, column: Floats, points: int, exact: bool) -> Sketch:
        """Sketch a sorted column of finite values."""
        n = column.size
        if n == 0:
            empty = np.empty(0)
            return cls(empty, empty, empty, 0)
        if exact or n <= points:
            starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
            values = column[starts]
            lt = starts
            le = np.r_[starts[1:], n]
        else:
            ranks = np.rint(np.linspace(0, n - 1, points)).astype(np.int64)
            values = np.unique(column[ranks])
            le = np.searchsorted(column, values, side="right")
            lt = np.searchsorted(column, values, side="left")
        return cls(values.astype(np.float64), le.astype(np.float64), lt.astype(np.float64), n)

    @functools.cached_property
    def error_bound(self) -> float:
        """The largest possible gap between the sketch CDF and the reference CDF (0 when exact)."""
        if self.values.size < 2:
            return 0.0
        return float(np.max(self.lt[1:] - self.le[:-1])) / self.n

    def cdf(self, x: Floats) -> Floats:
        """The reference CDF at `x` (exact at sketch points, interpolated between them)."""
        return self.counts(np.asarray(x, dtype=np.float64)) / max(self.n, 1)

    def counts(self, x: Floats) -> Floats:
        """Reference count <= x: exact at sketch values, a straight line in between.

        Between consecutive sketch values u_j < u_k the count is only known to rise from le[j]
        (just after u_j) to lt[k] (just before u_k); the line between them is off by at most
        that rise, which is the error bound. `np.interp` on the doubled knots (u_j, lt[j]),
        (u_j, le[j]) draws it, jumps included, taking the right-hand value at a knot (the tests
        against scipy hold it to that).
        """
        knots, heights = self._knots()
        result: Floats = np.interp(x, knots, heights)
        return result

    def counts_of_sorted(self, ordered: Floats, left: Ints) -> Floats:
        """`counts(ordered)` for a sorted sample, given searchsorted(ordered, values, "left").

        An exact sketch (nothing to interpolate) is read off by position, which is cheaper
        than interpolating on a million knots.
        """
        if self.values.size * 8 < ordered.size or self.error_bound > 0:
            return self.counts(ordered)
        # Sketch values <= ordered[i] are those whose left position is <= i.
        below = np.cumsum(np.bincount(left, minlength=ordered.size + 1)[: ordered.size])
        result: Floats = np.r_[0.0, self.le][below]
        return result

    def quantile(self, p: Floats) -> Floats:
        """The reference quantile function, inverse of `cdf`."""
        knots, heights = self._knots()
        result: Floats = np.interp(np.asarray(p) * self.n, heights, knots)
        return result

    def _knots(self) -> tuple[Floats, Floats]:
        cached: tuple[Floats, Floats] | None = self.__dict__.get("_knot_cache")
        if cached is None:
            cached = (np.repeat(self.values, 2), np.column_stack([self.lt, self.le]).ravel())
            object.__setattr__(self, "_knot_cache", cached)
        return cached


# ---------------------------------------------------------------- the profile


@dataclass(frozen=True, eq=False)
class Profile:
    """The reference distribution of every feature (and of the prediction score), fitted once.

    Per feature: `count` (non-missing values), `missing`, `minimum`, `maximum`, `mean`, `std`,
    and a `Sketch`. `score` holds the same for the positive-class probability when fitted
    with scores. Save with `save(path)`, load with `Profile.load(path)`; the file is a plain
    uncompressed `.npz` (readable with `numpy.load`), byte-identical for identical input.
    """

    feature_names: tuple[str, ...]
    kinds: tuple[Kind, ...]
    rows: int
    exact: bool
    sketch_points: int
    count: Ints
    missing: Ints
    minimum: Floats
    maximum: Floats
    mean: Floats
    std: Floats
    sketches: tuple[Sketch, ...]
    psi_edges: Floats
    psi_reference: Ints
    score: ColumnProfile | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({name: i for i, name in enumerate(self.feature_names)})

    @property
    def has_scores(self) -> bool:
        return self.score is not None

    def sketch(self, name: str) -> Sketch:
        """The reference sketch of a feature, or of the prediction score as `"prediction"`."""
        if name == SCORE_NAME and self.score is not None and name not in self._index:
            return self.score.sketch
        if name not in self._index:
            raise KeyError(f"no feature {name!r} in the profile")
        return self.sketches[self._index[name]]

    def cdf(self, name: str, x: npt.ArrayLike) -> Floats:
        """The reference CDF of one feature at `x` (for plots and reports)."""
        return self.sketch(name).cdf(np.asarray(x, dtype=np.float64))

    def out_of_range(self, rows: npt.ArrayLike) -> Bools:
        """Per row: is any feature outside the reference range (or an unseen category)?

        Missing values (NaN) are not out of range. `rows` is (n, features) or one row.
        """
        matrix = _as_rows(rows, len(self.feature_names))
        with np.errstate(invalid="ignore"):
            outside: Bools = np.asarray((matrix < self.minimum) | (matrix > self.maximum))
        for j, kind in enumerate(self.kinds):
            if kind == "categorical":
                column = matrix[:, j]
                outside[:, j] = ~np.isin(column, self.sketches[j].values) & ~np.isnan(column)
        result: Bools = np.asarray(outside.any(axis=1))
        return result

    # -------------------------------------------------------- file format

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the profile as an uncompressed .npz whose bytes depend only on its content."""
        columns = [*self._columns(), *([self.score] if self.score else [])]
        meta = {
            "format": FORMAT,
            "features": list(self.feature_names),
            "kinds": list(self.kinds),
            "rows": self.rows,
            "exact": self.exact,
            "sketch_points": self.sketch_points,
            "psi_bins": PSI_BINS,
            "has_scores": self.score is not None,
        }
        arrays = {
            "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            **_stack_columns(columns),
        }
        _write_npz(Path(path), arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Read a profile written by `save`."""
        arrays = _read_npz(Path(path))
        meta = json.loads(arrays["meta"].tobytes())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a drift profile of format {FORMAT}")
        columns = _unstack_columns(arrays, len(meta["features"]) + int(meta["has_scores"]))
        score = columns.pop() if meta["has_scores"] else None
        return cls._from_columns(
            names=meta["features"],
            kinds=meta["kinds"],
            columns=columns,
            rows=meta["rows"],
            exact=meta["exact"],
            points=meta["sketch_points"],
            score=score,
        )

    def _columns(self) -> list[ColumnProfile]:
        return [
            ColumnProfile(
                self.kinds[j],
                int(self.count[j]),
                int(self.missing[j]),
                float(self.minimum[j]),
                float(self.maximum[j]),
                float(self.mean[j]),
                float(self.std[j]),
                self.sketches[j],
                self.psi_edges[j],
                self.psi_reference[j],
            )
            for j in range(len(self.feature_names))
        ]

    @classmethod
    def _from_columns(
        cls,
        *,
        names: Sequence[str],
        kinds: Sequence[Kind],
        columns: Sequence[ColumnProfile],
        rows: int,
        exact: bool,
        points: int,
        score: ColumnProfile | None,
    ) -> Profile:
        return cls(
            feature_names=tuple(names),
            kinds=tuple(kinds),
            rows=rows,
            exact=exact,
            sketch_points=points,
            count=np.array([c.count for c in columns], dtype=np.int64),
            missing=np.array([c.missing for c in columns], dtype=np.int64),
            minimum=np.array([c.minimum for c in columns], dtype=np.float64),
            maximum=np.array([c.maximum for c in columns], dtype=np.float64),
            mean=np.array([c.mean for c in columns], dtype=np.float64),
            std=np.array([c.std for c in columns], dtype=np.float64),
            sketches=tuple(c.sketch for c in columns),
            psi_edges=np.array([c.psi_edges for c in columns], dtype=np.float64).reshape(-1, PSI_BINS - 1),
            psi_reference=np.array([c.psi_reference for c in columns], dtype=np.int64).reshape(-1, PSI_BINS),
            score=score,
        )


@dataclass(frozen=True, eq=False)
class ColumnProfile:
    """Everything the profile keeps about one column."""

    kind: Kind
    count: int
    missing: int
    minimum: float
    maximum: float
    mean: float
    std: float
    sketch: Sketch
    psi_edges: Floats
    psi_reference: Ints


def fit_profile(
    reference: npt.ArrayLike,
    feature_names: Sequence[str],
    *,
    scores: npt.ArrayLike | None = None,
    categorical: Iterable[str] = (),
    exact: bool = False,
    sketch_points: int = DEFAULT_SKETCH_POINTS,
    workers: int | None = None,
) -> Profile:
    """Fit the reference profile of `reference` (rows x features, in `feature_names` order).

    `scores` are the model's positive-class probabilities on the same rows (prediction
    drift). Features named in `categorical` hold category codes. With `exact=False` (the
    default) each numeric feature keeps a sketch of `sketch_points` order statistics, so the
    saved file is about 24 bytes x sketch_points per feature whatever the row count; with
    `exact=True` it keeps every distinct value (file size grows with the rows).
    """
    names = list(feature_names)
    matrix = _as_rows(reference, len(names))
    kinds: list[Kind] = ["categorical" if n in set(categorical) else "numeric" for n in names]
    unknown = set(categorical) - set(names)
    if unknown:
        raise ValueError(f"categorical names {sorted(unknown)} are not among the feature names")
    if sketch_points < 2:
        raise ValueError("sketch_points must be at least 2")
    half: Bools = np.asarray(np.random.default_rng(SPLIT_SEED).random(matrix.shape[0]) < 0.5)

    def fit_column(j: int) -> ColumnProfile:
        return _fit_column(matrix[:, j], kinds[j], half, sketch_points, exact)

    columns = _map(fit_column, range(len(names)), workers, matrix.size)
    score = None
    if scores is not None:
        score_column = np.asarray(scores, dtype=np.float64).ravel()
        if score_column.size != matrix.shape[0]:
            raise ValueError(f"scores has {score_column.size} values for {matrix.shape[0]} rows")
        score = _fit_column(score_column, "numeric", half, sketch_points, exact)
    return Profile._from_columns(
        names=names,
        kinds=kinds,
        columns=columns,
        rows=matrix.shape[0],
        exact=exact,
        points=sketch_points,
        score=score,
    )


def _fit_column(column: Floats, kind: Kind, half: Bools, points: int, exact: bool) -> ColumnProfile:
    ordered, missing = _sorted_finite(column)
    sketch = Sketch.of_sorted(ordered, points, exact or kind == "categorical")
    if kind == "categorical" and sketch.values.size > MAX_CATEGORIES:
        raise ValueError(f"a categorical feature has {sketch.values.size} categories (> {MAX_CATEGORIES})")
    edges, reference = _psi_bins(ordered, half) if kind == "numeric" else _no_psi_bins()
    mean = float(ordered.mean()) if ordered.size else math.nan
    return ColumnProfile(
        kind=kind,
        count=int(ordered.size),
        missing=missing,
        minimum=float(ordered[0]) if ordered.size else math.nan,
        maximum=float(ordered[-1]) if ordered.size else math.nan,
        mean=mean,
        std=_std(ordered, mean),
        sketch=sketch,
        psi_edges=edges,
        psi_reference=reference,
    )


def _psi_bins(ordered: Floats, half: Bools) -> tuple[Floats, Ints]:
    """Decile edges from a random half of the reference, bin counts from the other half.

    The halves are drawn over the sorted values, which splits the rows at random just as well
    (the split is independent of the values) and keeps both halves sorted; they are read off
    one running count of the chosen half rather than copied out.
    """
    chosen_before = np.cumsum(half[: ordered.size])  # chosen values among the first i + 1
    fit_size = int(chosen_before[-1]) if ordered.size else 0
    held_size = ordered.size - fit_size
    if fit_size < PSI_BINS or held_size < PSI_BINS:
        return _no_psi_bins()
    ranks = (np.arange(1, PSI_BINS) * fit_size) // PSI_BINS  # 0-based ranks within the fit half
    edges = ordered[np.searchsorted(chosen_before, ranks + 1)]
    at_or_below = np.searchsorted(ordered, edges, side="right")
    held_at_or_below = at_or_below - chosen_before[at_or_below - 1]
    counts: Ints = np.diff(np.r_[0, held_at_or_below, held_size]).astype(np.int64)
    return edges, counts


def _std(values: Floats, mean: float) -> float:
    """Sample standard deviation in two passes over the data (not numpy's four)."""
    if values.size < 2:
        return 0.0
    deviations = values - mean
    return math.sqrt(float(np.dot(deviations, deviations)) / (values.size - 1))


def _no_psi_bins() -> tuple[Floats, Ints]:
    return np.full(PSI_BINS - 1, np.nan), np.zeros(PSI_BINS, dtype=np.int64)


def _bin_counts(ordered: Floats, edges: Floats) -> Ints:
    """Counts of a sorted column in the bins (-inf, e1], (e1, e2], ..., (e9, inf)."""
    cuts = np.searchsorted(ordered, edges, side="right")
    counts: Ints = np.diff(np.r_[0, cuts, ordered.size]).astype(np.int64)
    return counts


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
    matrix = _as_rows(current, len(profile.feature_names))
    columns = profile._columns()

    def compare(j: int) -> _Comparison:
        return _compare(columns[j], matrix[:, j])

    results = _map(compare, range(len(columns)), workers, matrix.size)
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
    ordered, missing = _sorted_finite(column)
    if reference.kind == "categorical":
        result = _compare_categories(reference, ordered)
    else:
        result = _compare_numeric(reference, ordered)
    p_missing = _missing_rate_p(reference.missing, reference.count, missing, ordered.size)
    p_value, effect = result.p_value, result.effect_size
    if p_missing is not None:
        p_value = min(1.0, 2 * min(p_value, p_missing))
        rates = (
            _fraction(reference.missing, reference.missing + reference.count),
            _fraction(missing, column.size),
        )
        effect = float(np.nanmax([effect, _cohens_h(*rates)]))
    return _Comparison(
        statistic=result.statistic,
        p_value=p_value,
        effect_size=effect,
        psi=result.psi,
        count=int(ordered.size),
        missing=_fraction(missing, missing + ordered.size),
        error_bound=result.error_bound,
        test=result.test,
    )


def _compare_numeric(reference: ColumnProfile, ordered: Floats) -> _Comparison:
    sketch = reference.sketch
    if ordered.size == 0 or sketch.n == 0:
        return _Comparison(math.nan, 1.0, math.nan, math.nan, 0, 0.0, 0.0, "ks")
    statistic = ks_statistic(sketch, ordered)
    bound = sketch.error_bound
    p_value = ks_pvalue(max(statistic - bound, 0.0), sketch.n, ordered.size)
    return _Comparison(
        statistic=statistic,
        p_value=p_value,
        effect_size=_wasserstein(sketch, ordered) / _scale(reference),
        psi=_psi(reference, ordered),
        count=int(ordered.size),
        missing=0.0,
        error_bound=bound,
        test="ks",
    )


def _compare_categories(reference: ColumnProfile, ordered: Floats) -> _Comparison:
    sketch = reference.sketch
    ref_counts = np.r_[sketch.le - sketch.lt, 0.0]
    cur_counts = _category_counts(sketch.values, ordered)
    statistic, p_value = _chi_squared(ref_counts, cur_counts)
    return _Comparison(
        statistic=statistic,
        p_value=p_value,
        effect_size=_cohens_w(ref_counts, cur_counts),
        psi=_psi_from_counts(ref_counts, cur_counts),
        count=int(ordered.size),
        missing=0.0,
        error_bound=0.0,
        test="chi2",
    )


# ---------------------------------------------------------------- statistics


def ks_statistic(sketch: Sketch, ordered: Floats) -> float:
    """Two-sample KS statistic D between the reference sketch and a sorted current sample.

    The supremum of |F_ref - F_cur| is attained at a jump of either function, approached from
    the right or the left; every such point is evaluated. With an exact sketch this is the same
    set of differences `scipy.stats.ks_2samp` takes the maximum of.
    """
    m, n = ordered.size, sketch.n
    left, right = _positions(ordered, sketch.values)
    at_sketch = max(
        float(np.max(np.abs(sketch.le / n - right / m))),
        float(np.max(np.abs(sketch.lt / n - left / m))),
    )
    if np.any(ordered[1:] == ordered[:-1]):
        return max(at_sketch, _ks_at_distinct(sketch, ordered))
    # gap[i] = F_ref(x_i) - F_cur(x_i-) for the i-th smallest current value x_i.
    gap = sketch.counts_of_sorted(ordered, left)
    gap /= n
    gap -= _steps(m)
    at_right = max(1.0 / m - float(gap.min()), float(gap.max()) - 1.0 / m)
    # At a current value that is also a sketch value the left limit of F_ref is lt, not the
    # interpolated count: those pairs were taken in `at_sketch`, so neutralize them here.
    gap[left[right > left]] = 0.0
    at_left = max(float(gap.max()), -float(gap.min()))
    return max(at_sketch, at_right, at_left)


def _ks_at_distinct(sketch: Sketch, ordered: Floats) -> float:
    """The current-sample part of `ks_statistic` when the sample has ties."""
    m, n = ordered.size, sketch.n
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    values = ordered[starts]
    reference = sketch.counts(values) / n
    at_right = float(np.max(np.abs(reference - np.r_[starts[1:], m] / m)))
    from_left = np.abs(reference - starts / m)
    position = np.minimum(np.searchsorted(values, sketch.values), values.size - 1)
    from_left[position[values[position] == sketch.values]] = 0.0
    return max(at_right, float(from_left.max()))


def _positions(ordered: Floats, values: Floats) -> tuple[Ints, Ints]:
    """searchsorted(ordered, values) from the left and from the right.

    The right-hand search is only run for the values that occur in `ordered`, since elsewhere
    both are equal; with a large exact reference that halves the work.
    """
    left = np.searchsorted(ordered, values, side="left")
    right = left.copy()
    inside = left < ordered.size
    present = np.zeros(values.size, dtype=bool)
    present[inside] = ordered[left[inside]] == values[inside]
    if present.any():
        right[present] = np.searchsorted(ordered, values[present], side="right")
    return left, right


@functools.lru_cache(maxsize=2)
def _steps(m: int) -> Floats:
    """i / m for i = 0..m-1, shared by the columns of one window (read-only)."""
    steps = np.arange(m) / m
    steps.flags.writeable = False
    return steps


def ks_pvalue(statistic: float, n_reference: int, n_current: int) -> float:
    """Asymptotic two-sided p-value of the two-sample KS statistic.

    Up to an effective size n1 n2 / (n1 + n2) of `EXACT_PVALUE_MAX_N`, the formula
    `scipy.stats.ks_2samp(method="asymp")` uses (the one-sample distribution `kstwo` at the
    effective size); above it Smirnov's limit `kolmogorov(sqrt(n) D)`, because kstwo's cost grows
    with n (0.2 s per call at 1M x 1M rows). The limit is never smaller than kstwo's value and
    is within 0.7% of it (absolute) from that size on: the p-value only errs on the safe side.
    """
    big, small = sorted([float(n_reference), float(n_current)], reverse=True)
    effective = big * small / (big + small)
    if effective <= EXACT_PVALUE_MAX_N:
        p_value = stats.kstwo.sf(statistic, np.round(effective))
    else:
        p_value = special.kolmogorov(math.sqrt(effective) * statistic)
    return float(np.clip(p_value, 0.0, 1.0))


def adjust_pvalues(p_values: npt.ArrayLike, method: Correction = "holm") -> Floats:
    """Multiplicity-adjusted p-values; reject where adjusted <= alpha.

    "holm": Holm's step-down (family-wise error rate, any dependence); "bh": Benjamini–Hochberg
    step-up (false discovery rate, independent or positively dependent tests); "bonferroni";
    "none".
    """
    p = np.asarray(p_values, dtype=np.float64)
    k = p.size
    if k == 0 or method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * k, 1.0)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        steps = np.maximum.accumulate(ranked * (k - np.arange(k)))
    elif method == "bh":
        steps = np.minimum.accumulate((ranked * k / np.arange(1, k + 1))[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}; use holm, bh, bonferroni or none")
    adjusted = np.empty(k)
    adjusted[order] = np.minimum(steps, 1.0)
    return adjusted


def _wasserstein(sketch: Sketch, ordered: Floats, grid: int = 2048) -> float:
    """W1 = integral over p of |Q_ref(p) - Q_cur(p)|, by the midpoint rule on `grid` quantiles."""
    p = (np.arange(grid) + 0.5) / grid
    current = ordered[np.minimum((p * ordered.size).astype(np.int64), ordered.size - 1)]
    return float(np.mean(np.abs(sketch.quantile(p) - current)))


def _scale(reference: ColumnProfile) -> float:
    if reference.std > 0:
        return reference.std
    # A constant reference: any movement is an effect; measure it against the value's size.
    return max(abs(reference.mean), 1.0) * 1e-9


def _psi(reference: ColumnProfile, ordered: Floats) -> float:
    if np.isnan(reference.psi_edges).any():
        return math.nan
    current = _bin_counts(ordered, reference.psi_edges)
    return _psi_from_counts(reference.psi_reference.astype(np.float64), current.astype(np.float64))


def _psi_from_counts(reference: Floats, current: Floats) -> float:
    """PSI with half-a-count smoothing, so that an empty bin does not give infinity."""
    keep = (reference + current) > 0
    r = (reference[keep] + 0.5) / (reference.sum() + 0.5 * keep.sum())
    c = (current[keep] + 0.5) / (current.sum() + 0.5 * keep.sum())
    return float(np.sum((c - r) * np.log(c / r)))


def _category_counts(categories: Floats, ordered: Floats) -> Floats:
    """Current counts per reference category, and last the count of unseen categories."""
    known = (
        np.searchsorted(ordered, categories, side="right") - np.searchsorted(ordered, categories, side="left")
    ).astype(np.float64)
    result: Floats = np.r_[known, ordered.size - known.sum()]
    return result


def _chi_squared(reference: Floats, current: Floats) -> tuple[float, float]:
    """Pearson's chi-squared test of homogeneity on the 2 x K table of counts."""
    keep = (reference + current) > 0
    table = np.vstack([reference[keep], current[keep]])
    totals = table.sum(axis=1, keepdims=True)
    if table.shape[1] < 2 or np.any(totals == 0):
        return 0.0, 1.0
    expected = totals * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, table.shape[1] - 1))


def _cohens_w(reference: Floats, current: Floats) -> float:
    """sqrt(sum (p_cur - p_ref)^2 / p_ref); an unseen category counts as half a reference value."""
    if current.sum() == 0:
        return math.nan
    p_ref = np.maximum(reference, 0.5) / max(reference.sum(), 1.0)
    p_cur = current / current.sum()
    return float(np.sqrt(np.sum((p_cur - p_ref) ** 2 / p_ref)))


def _cohens_h(p1: float, p2: float) -> float:
    """Effect size of a change in a proportion (0.2 small, 0.5 medium, like Cohen's d)."""
    return abs(2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2)))


def _missing_rate_p(ref_missing: int, ref_count: int, cur_missing: int, cur_count: int) -> float | None:
    """Two-sided two-proportion z-test on the missing rate; None when neither side misses any."""
    if ref_missing == 0 and cur_missing == 0:
        return None
    n1, n2 = ref_missing + ref_count, cur_missing + cur_count
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (ref_missing + cur_missing) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return 1.0
    z = abs(ref_missing / n1 - cur_missing / n2) / spread
    return float(2 * stats.norm.sf(z))


# ---------------------------------------------------------------- streaming window


class DriftWindow:
    """The most recent `size` rows the server saw, to compare with the profile off the request path.

    `add(rows)` copies rows into a ring buffer (cheap: one slice assignment); `statistics()`
    returns the KS statistic per feature over the rows held (total-variation distance for
    categorical features, NaN while empty), for a gauge; `report()` runs the full
    `detect_drift` on them. Not thread-safe: call it under the caller's lock.
    """

    def __init__(self, profile: Profile, size: int) -> None:
        if size < 1:
            raise ValueError("the window size must be at least 1")
        self.profile = profile
        self.size = size
        self._rows = np.full((size, len(profile.feature_names)), np.nan)
        self._next = 0
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def add(self, rows: npt.ArrayLike) -> None:
        """Append rows ((n, features) or one row); the oldest rows drop out beyond `size`."""
        matrix = _as_rows(rows, self._rows.shape[1])[-self.size :]
        count = matrix.shape[0]
        first = min(count, self.size - self._next)
        self._rows[self._next : self._next + first] = matrix[:first]
        self._rows[: count - first] = matrix[first:]
        self._next = (self._next + count) % self.size
        self._held = min(self._held + count, self.size)

    def rows(self) -> Floats:
        """The rows held, oldest first (a copy)."""
        if self._held < self.size:
            return self._rows[: self._held].copy()
        return np.roll(self._rows, -self._next, axis=0)

    def statistics(self) -> dict[str, float]:
        """Feature name -> KS statistic (TVD for categorical features) over the window."""
        window = self._rows[: self._held]
        result = {}
        for j, column in enumerate(self.profile._columns()):
            ordered, _ = _sorted_finite(window[:, j])
            result[self.profile.feature_names[j]] = _window_statistic(column, ordered)
        return result

    def report(self, **options: Any) -> DriftReport:
        """`detect_drift` on the rows held; options as for `detect_drift`."""
        return detect_drift(self.profile, self._rows[: self._held], **options)


def _window_statistic(column: ColumnProfile, ordered: Floats) -> float:
    if ordered.size == 0 or column.sketch.n == 0:
        return math.nan
    if column.kind == "categorical":
        reference = np.r_[column.sketch.le - column.sketch.lt, 0.0]
        current = _category_counts(column.sketch.values, ordered)
        return float(0.5 * np.abs(reference / reference.sum() - current / current.sum()).sum())
    return ks_statistic(column.sketch, ordered)


# ---------------------------------------------------------------- helpers


def _as_rows(data: npt.ArrayLike, features: int) -> Floats:
    matrix = np.asarray(data, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] != features:
        raise ValueError(f"expected rows of {features} features, got an array of shape {matrix.shape}")
    return matrix


def _sorted_finite(column: Floats) -> tuple[Floats, int]:
    """The finite values sorted (a new array), and how many were missing or infinite."""
    ordered = np.sort(np.asarray(column, dtype=np.float64))
    low = int(np.searchsorted(ordered, -np.inf, side="right"))
    high = int(np.searchsorted(ordered, np.inf, side="left"))
    return ordered[low:high], ordered.size - (high - low)


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _map(func: Callable[[int], _T], items: Iterable[int], workers: int | None, size: int) -> list[_T]:
    """`func` over `items`, on threads when the work is large enough to pay for them."""
    jobs = list(items)
    threads = min(workers or os.cpu_count() or 1, len(jobs))
    if threads <= 1 or size < PARALLEL_MIN_VALUES:
        return [func(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(func, jobs))


def _stack_columns(columns: Sequence[ColumnProfile]) -> dict[str, np.ndarray[Any, Any]]:
    sizes = [c.sketch.values.size for c in columns]
    return {
        "kind_categorical": np.array([c.kind == "categorical" for c in columns], dtype=np.uint8),
        "count": np.array([c.count for c in columns], dtype=np.int64),
        "missing": np.array([c.missing for c in columns], dtype=np.int64),
        "minimum": np.array([c.minimum for c in columns], dtype=np.float64),
        "maximum": np.array([c.maximum for c in columns], dtype=np.float64),
        "mean": np.array([c.mean for c in columns], dtype=np.float64),
        "std": np.array([c.std for c in columns], dtype=np.float64),
        "sketch_offsets": np.r_[0, np.cumsum(sizes)].astype(np.int64),
        "sketch_values": _concat([c.sketch.values for c in columns], np.float64),
        "sketch_le": _concat([c.sketch.le for c in columns], np.int64),
        "sketch_lt": _concat([c.sketch.lt for c in columns], np.int64),
        "psi_edges": np.array([c.psi_edges for c in columns], dtype=np.float64).reshape(-1, PSI_BINS - 1),
        "psi_reference": np.array([c.psi_reference for c in columns], dtype=np.int64).reshape(-1, PSI_BINS),
    }


def _unstack_columns(arrays: dict[str, np.ndarray[Any, Any]], count: int) -> list[ColumnProfile]:
    offsets = arrays["sketch_offsets"]
    if offsets.size != count + 1:
        raise ValueError("the profile's arrays do not match its feature list")
    columns = []
    for j in range(count):
        part = slice(int(offsets[j]), int(offsets[j + 1]))
        sketch = Sketch(
            values=arrays["sketch_values"][part].astype(np.float64),
            le=arrays["sketch_le"][part].astype(np.float64),
            lt=arrays["sketch_lt"][part].astype(np.float64),
            n=int(arrays["count"][j]),
        )
        kind: Kind = "categorical" if arrays["kind_categorical"][j] else "numeric"
        columns.append(
            ColumnProfile(
                kind=kind,
                count=int(arrays["count"][j]),
                missing=int(arrays["missing"][j]),
                minimum=float(arrays["minimum"][j]),
                maximum=float(arrays["maximum"][j]),
                mean=float(arrays["mean"][j]),
                std=float(arrays["std"][j]),
                sketch=sketch,
                psi_edges=arrays["psi_edges"][j],
                psi_reference=arrays["psi_reference"][j],
            )
        )
    return columns


def _concat(parts: Sequence[Floats], dtype: type[np.generic]) -> np.ndarray[Any, Any]:
    if not parts:
        return np.empty(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype)


def _write_npz(path: Path, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
    """An uncompressed zip of .npy members with fixed dates: identical arrays, identical bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(
                member, np.ascontiguousarray(arrays[name]), version=(1, 0), allow_pickle=False
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    path.write_bytes(buffer.getvalue())


def _read_npz(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    with zipfile.ZipFile(path) as archive:
        return {
            info.filename.removesuffix(".npy"): np.lib.format.read_array(
                io.BytesIO(archive.read(info)), allow_pickle=False
            )
            for info in archive.infolist()
        }
