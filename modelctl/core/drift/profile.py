"""The reference profile: what a version's data looked like, fitted once by the pipeline.

`fit_profile` sketches each feature (and the prediction score) of the reference rows; `Profile`
saves it as `artifacts/<model>/profile.npz` and loads it from a path or from bytes. The profile
stage of `dvc.yaml` runs this module (and only this one of the package): keep detection and
the statistics out of it, so that editing them does not stale every model's profile.
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
        matrix = as_rows(rows, len(self.feature_names))
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
        """Read a profile written by `save`; raises ValueError when it is not one."""
        return cls.from_bytes(Path(path).read_bytes(), str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "profile") -> Profile:
        """Read a profile from the bytes `save` wrote (for instance, bytes whose hash was checked).

        Raises
        ------
        ValueError
            The bytes are not a profile of this format (`source` names them in the message).
        KeyError, zipfile.BadZipFile
            The archive is damaged.
        """
        arrays = _read_npz(data)
        meta = json.loads(arrays["meta"].tobytes())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{source}: not a drift profile of format {FORMAT}")
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
    matrix = as_rows(reference, len(names))
    kinds: list[Kind] = ["categorical" if n in set(categorical) else "numeric" for n in names]
    unknown = set(categorical) - set(names)
    if unknown:
        raise ValueError(f"categorical names {sorted(unknown)} are not among the feature names")
    if sketch_points < 2:
        raise ValueError("sketch_points must be at least 2")
    half: Bools = np.asarray(np.random.default_rng(SPLIT_SEED).random(matrix.shape[0]) < 0.5)

    def fit_column(j: int) -> ColumnProfile:
        return _fit_column(matrix[:, j], kinds[j], half, sketch_points, exact)

    columns = map_columns(fit_column, range(len(names)), workers, matrix.size)
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
    ordered, missing = sorted_finite(column)
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


def bin_counts(ordered: Floats, edges: Floats) -> Ints:
    """Counts of a sorted column in the bins (-inf, e1], (e1, e2], ..., (e9, inf)."""
    cuts = np.searchsorted(ordered, edges, side="right")
    counts: Ints = np.diff(np.r_[0, cuts, ordered.size]).astype(np.int64)
    return counts


def as_rows(data: npt.ArrayLike, features: int) -> Floats:
    matrix = np.asarray(data, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] != features:
        raise ValueError(f"expected rows of {features} features, got an array of shape {matrix.shape}")
    return matrix


def sorted_finite(column: Floats) -> tuple[Floats, int]:
    """The finite values sorted (a new array), and how many were missing or infinite."""
    ordered = np.sort(np.asarray(column, dtype=np.float64))
    low = int(np.searchsorted(ordered, -np.inf, side="right"))
    high = int(np.searchsorted(ordered, np.inf, side="left"))
    return ordered[low:high], ordered.size - (high - low)


def map_columns(func: Callable[[int], _T], items: Iterable[int], workers: int | None, size: int) -> list[_T]:
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


def _read_npz(data: bytes) -> dict[str, np.ndarray[Any, Any]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            info.filename.removesuffix(".npy"): np.lib.format.read_array(
                io.BytesIO(archive.read(info)), allow_pickle=False
            )
            for info in archive.infolist()
        }
