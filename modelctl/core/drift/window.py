"""The server's streaming window: the most recent rows, compared with the profile off the request path."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from modelctl.core.drift.detect import DriftReport, detect_drift
from modelctl.core.drift.profile import ColumnProfile, Floats, Profile, as_rows, sorted_finite
from modelctl.core.drift.statistics import category_counts, ks_statistic


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
        matrix = as_rows(rows, self._rows.shape[1])[-self.size :]
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
            ordered, _ = sorted_finite(window[:, j])
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
        current = category_counts(column.sketch.values, ordered)
        return float(0.5 * np.abs(reference / reference.sum() - current / current.sum()).sum())
    return ks_statistic(column.sketch, ordered)


def outside_reference(profile: Profile, rows: Floats) -> npt.NDArray[np.bool_]:
    """Per value of `rows` (n, features): outside the feature's reference range, or an unseen
    category; missing values (NaN) are not. `Profile.out_of_range` is this, any per row (it
    stays in profile.py untouched: the profile stage depends on that file's bytes)."""
    matrix = as_rows(rows, len(profile.feature_names))
    with np.errstate(invalid="ignore"):
        outside = np.asarray((matrix < profile.minimum) | (matrix > profile.maximum))
    for j, kind in enumerate(profile.kinds):
        if kind == "categorical":
            column = matrix[:, j]
            outside[:, j] = ~np.isin(column, profile.sketches[j].values) & ~np.isnan(column)
    return outside
