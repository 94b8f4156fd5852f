"""Ground truth that arrives after the prediction: live accuracy, precision and recall.

Predictions are remembered by request id in a window bounded in size and age, so memory
stays flat however many requests go unlabelled; scores cover the last `window` labels.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass


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


@dataclass(frozen=True)
class Scores:
    count: int
    accuracy: float
    precision: float
    recall: float


def _ratio(numerator: int, denominator: int) -> float:
    # Unknown is NaN, never 0: a zero would fire "accuracy dropped" alerts before any label.
    return numerator / denominator if denominator else float("nan")


class LiveScores:
    """Accuracy and positive-class precision and recall over the last `window` labelled rows."""

    def __init__(self, positive_index: int, window: int) -> None:
        self.positive_index = positive_index
        # Each labelled row as (correct, predicted positive, actually positive).
        self._window: deque[tuple[bool, bool, bool]] = deque(maxlen=window)
        self._totals = [0, 0, 0]
        self._true_positives = 0

    def add(self, predicted: int, actual: int) -> None:
        if len(self._window) == self._window.maxlen:
            self._count(self._window[0], -1)
        outcome = (predicted == actual, predicted == self.positive_index, actual == self.positive_index)
        self._window.append(outcome)
        self._count(outcome, 1)

    def _count(self, outcome: tuple[bool, bool, bool], sign: int) -> None:
        for position, flag in enumerate(outcome):
            self._totals[position] += sign * flag
        self._true_positives += sign * (outcome[1] and outcome[2])

    def scores(self) -> Scores:
        correct, predicted_positive, actual_positive = self._totals
        return Scores(
            count=len(self._window),
            accuracy=_ratio(correct, len(self._window)),
            precision=_ratio(self._true_positives, predicted_positive),
            recall=_ratio(self._true_positives, actual_positive),
        )
