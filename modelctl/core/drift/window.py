"""The server's streaming window: the most recent rows, compared with the profile off the request path."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from modelctl.core.drift.detect import DriftReport, detect_drift
from modelctl.core.drift.profile import Floats, Profile, as_rows


class DriftWindow:
    """The most recent `size` rows the server saw, to compare with the profile off the request path.

    `add(rows)` copies rows into a ring buffer (cheap: one slice assignment); `p_values()`
    returns each feature's p-value over the rows held, Holm-adjusted across the features (NaN
    while empty), for a gauge; `report()` runs the full `detect_drift` on them. Not
    thread-safe: call it under the caller's lock.

    A p-value accounts for the window's size where a raw statistic does not: the KS distance of
    three undrifted rows is typically above 0.3, while their p-value stays large. The tests are
    exact at small counts (see `detect_drift`), so a threshold on the adjusted p-value holds
    its false-alarm rate at any traffic level, from one row up.
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

    def p_values(self) -> dict[str, float]:
        """Feature name -> Holm-adjusted p-value of its test over the window (NaN while empty)."""
        if self._held == 0:
            return dict.fromkeys(self.profile.feature_names, float("nan"))
        return {feature.name: feature.p_adjusted for feature in self.report().features}

    def report(self, **options: Any) -> DriftReport:
        """`detect_drift` on the rows held; options as for `detect_drift`."""
        return detect_drift(self.profile, self._rows[: self._held], **options)


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
