"""Online drift against the version's reference profile, kept off the request path.

Each batch only flags out-of-distribution rows (one vectorized comparison) and parks its
rows; a timer moves them into the drift window and recomputes its p-values in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import zipfile
from collections import deque
from collections.abc import Callable

import numpy as np

from modelctl.core.drift import DriftWindow, Profile
from modelctl.core.drift.window import outside_reference
from modelctl.core.errors import UserError
from modelctl.core.schema import Signature
from modelctl.core.servingspec import ServingSpec
from serving.loader import FIX_RECORD, Matrix, read_verified
from serving.metrics import Counts

log = logging.getLogger("serving.drift")
Publish = Callable[[dict[str, float]], None]


def load_profile(spec: ServingSpec) -> Profile:
    """The reference profile, verified by sha256 like the artifact.

    The verified bytes themselves are parsed: what is read is exactly what was hashed.
    """
    data = read_verified(spec.profile_path, spec.profile_sha256, "reference profile")
    try:
        return Profile.from_bytes(data, spec.profile_path)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise UserError(
            spec.profile_path, f"the reference profile is unreadable ({exc})", FIX_RECORD
        ) from None


class DriftMonitor:
    """Parks predicted rows for the drift window; counts, per feature, rows out of distribution:
    outside the reference profile's range (or an unseen category) or the signature's."""

    def __init__(self, profile: Profile, signature: Signature, window_size: int) -> None:
        self.profile = profile
        low = np.array([-np.inf if f.min is None else f.min for f in signature.features])
        high = np.array([np.inf if f.max is None else f.max for f in signature.features])
        self._categorical = [j for j, kind in enumerate(profile.kinds) if kind == "categorical"]
        numeric = np.array([kind != "categorical" for kind in profile.kinds])
        # Outside either range is outside the narrower of the two: two comparisons per batch, not
        # four (fmax/fmin: a feature the profile saw no value of keeps the signature's bounds).
        self._low = np.where(numeric, np.fmax(profile.minimum, low), low)
        self._high = np.where(numeric, np.fmin(profile.maximum, high), high)
        self.window = DriftWindow(profile, window_size)
        # At most one window's worth of rows waits for the timer; older rows would be dropped anyway.
        self._parked: deque[Matrix] = deque()
        self._parked_rows = 0
        self._window_size = window_size

    def observe(self, rows: Matrix) -> Counts:
        """Park a batch for the drift window; per feature, how many of its rows are out of distribution."""
        self._parked.append(rows)
        self._parked_rows += len(rows)
        while self._parked_rows - len(self._parked[0]) >= self._window_size:
            self._parked_rows -= len(self._parked.popleft())
        outside = (rows < self._low) | (rows > self._high)
        if self._categorical:  # unseen categories: outside_reference's own test, on those columns
            outside[:, self._categorical] |= outside_reference(self.profile, rows)[:, self._categorical]
        counts: Counts = np.count_nonzero(outside, axis=0)
        return counts

    def _take(self) -> Matrix | None:
        if not self._parked:
            return None
        rows = np.concatenate(self._parked)
        self._parked.clear()
        self._parked_rows = 0
        return rows

    def update(self, rows: Matrix | None) -> dict[str, float]:
        if rows is not None:
            self.window.add(rows)
        return self.window.p_values()

    async def run(self, interval: float, publish: Publish) -> None:
        """Every `interval` seconds, fold the parked rows into the window and publish its p-values."""
        while True:
            await asyncio.sleep(interval)
            rows = self._take()
            if rows is None:
                continue
            try:
                publish(await asyncio.to_thread(self.update, rows))
            except Exception:  # drift is monitoring: log it and keep serving predictions
                log.exception("drift statistics failed; keeping the previous values")
