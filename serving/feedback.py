"""Ground truth that arrives after the prediction, matched to it by request id.

Predictions are remembered in a window bounded in size and age, so memory stays flat however
many requests go unlabelled. Each label is counted in model_feedback_total{actual, predicted}:
counters add up across replicas, so PromQL computes accuracy, precision and recall over any
window for a whole Deployment (a per-pod gauge over the last N labels cannot be aggregated).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence


class PredictionMemory:
    """Predicted class indices by request id: at most `capacity` rows, none older than `ttl` s.

    Rows, not requests, are counted, so a stream of large batches cannot grow it either.
    """

    def __init__(self, capacity: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, tuple[int, ...]]] = OrderedDict()
        self._rows = 0

    def __len__(self) -> int:
        """The rows remembered."""
        return self._rows

    def remember(self, request_id: str, predicted: Sequence[int]) -> None:
        self._forget(request_id)
        self._entries[request_id] = (self._clock(), tuple(predicted))
        self._rows += len(predicted)
        while self._rows > self.capacity:
            self._drop_oldest()
        self._expire()

    def take(self, request_id: str) -> tuple[int, ...] | None:
        """The predictions of `request_id`, forgotten once taken so a label counts once."""
        self._expire()
        return self._forget(request_id)

    def _forget(self, request_id: str) -> tuple[int, ...] | None:
        entry = self._entries.pop(request_id, None)
        if entry is None:
            return None
        self._rows -= len(entry[1])
        return entry[1]

    def _drop_oldest(self) -> None:
        self._rows -= len(self._entries.popitem(last=False)[1][1])

    def _expire(self) -> None:
        oldest = self._clock() - self.ttl
        while self._entries and next(iter(self._entries.values()))[0] < oldest:
            self._drop_oldest()
