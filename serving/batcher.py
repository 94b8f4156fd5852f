"""Gather concurrent requests into one model call.

One `predict_proba` on a batch of 64 rows costs about what one row costs alone, so the
server predicts everything pending at once, at the next turn of the event loop, or when
`max_rows` rows are pending. The prediction is the argmax of the probabilities, exactly
what scikit-learn's own `predict` returns, so the model is never called twice.

Clients answered together send their next requests together, but these arrive spread over
the time the server takes to read them (about its CPU per request times the wave's size), so an
eager flush splits each wave and pays for several model calls. So a batch waits until it holds as
many requests as the largest of the last `RECENT` batches: the request that completes it schedules
the flush for the end of that event-loop turn (so requests read in the same turn join too). When
load drops, a batch goes once no request has come for `max_wait` seconds, and at the latest
`MAX_WAITS` × `max_wait` after its first request; once the larger batches are older than the last
`RECENT`, batches expect the smaller size.

The wait is measured on a real clock, not by one timer: uvloop's timers count whole
milliseconds (`call_later` rounds the delay, so 0.5 ms is 0, the next turn; and its clock is cut
to the millisecond, so a 1 ms timer may fire at once). That flushed the first request of every
wave alone at 8 clients, and batches of one or two at 64. A timer that fires before the batch is
due is set again for what is left, at least `TIMER_RESOLUTION`: a batch may go up to 1 ms after
it is due, never before.
(Expecting only the previous batch's size let one straggler flushed alone set the expectation to
1, and it rarely grew back. Turning the event loop until the batch filled cost ~1 µs of CPU per turn
for hundreds of turns per wave: ~30 µs per request at 8 clients.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter

import numpy as np
import numpy.typing as npt

from serving.inputs import Row
from serving.loader import Matrix

Predictor = Callable[[Matrix], Matrix]
# Called with every batch's rows and probabilities, for metrics and the drift window.
Observer = Callable[[Matrix, Matrix], None]
# Batches whose largest size a new batch waits for.
RECENT = 16
# A batch's longest wait, in multiples of `max_wait`, when requests keep trickling in.
MAX_WAITS = 4
# uvloop's timers count whole milliseconds (seconds).
TIMER_RESOLUTION = 0.001


@dataclass(frozen=True)
class BatchResult:
    """One model call's answers, as arrays and as the Python values JSON answers are made of."""

    probabilities: Matrix  # (rows, classes)
    classes: npt.NDArray[np.intp]  # (rows,) the argmax
    timestamp: str
    class_list: list[int]
    probability_rows: list[list[float]]


class Predictions:
    """One request's rows of a batch: rows `start` to `end` of `batch` (sliced only when asked)."""

    __slots__ = ("batch", "end", "start")

    def __init__(self, batch: BatchResult, start: int, end: int) -> None:
        self.batch, self.start, self.end = batch, start, end

    @property
    def probabilities(self) -> Matrix:
        return self.batch.probabilities[self.start : self.end]

    @property
    def classes(self) -> npt.NDArray[np.intp]:
        return self.batch.classes[self.start : self.end]

    @property
    def class_indices(self) -> list[int]:
        return self.batch.class_list[self.start : self.end]

    @property
    def probability_rows(self) -> list[list[float]]:
        return self.batch.probability_rows[self.start : self.end]

    @property
    def timestamp(self) -> str:
        return self.batch.timestamp


class Batcher:
    def __init__(self, predict_proba: Predictor, observe: Observer, max_rows: int, max_wait: float) -> None:
        self._predict_proba = predict_proba
        self._observe = observe
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._pending: list[tuple[list[Row], asyncio.Future[Predictions]]] = []
        self._pending_rows = 0
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._flush_soon = False  # the handle is this turn's flush, not the max_wait timer
        self._recent: deque[int] = deque(maxlen=RECENT)  # the last batches' sizes, in requests
        self._expected = 0  # the largest of them
        self._first_arrival = self._last_arrival = 0.0  # perf_counter() seconds, of the pending batch

    def submit(self, rows: list[Row]) -> asyncio.Future[Predictions]:
        """A future for these rows' predictions, made in the next batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Predictions] = loop.create_future()
        self._pending.append((rows, future))
        self._pending_rows += len(rows)
        self._last_arrival = perf_counter()
        if self._pending_rows >= self.max_rows:
            self.flush()
        elif len(self._pending) >= self._expected:
            if not self._flush_soon:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                self._flush_handle = loop.call_soon(self.flush)
                self._flush_soon = True
        elif self._flush_handle is None:
            self._first_arrival = self._last_arrival
            self._flush_handle = loop.call_later(self.max_wait, self._waited)
        return future

    def _waited(self) -> None:
        """The timer: flush once no request came for `max_wait` or the first has waited its longest."""
        now = perf_counter()
        due = min(self._last_arrival + self.max_wait, self._first_arrival + MAX_WAITS * self.max_wait)
        if now >= due:
            self.flush()
        else:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(max(due - now, TIMER_RESOLUTION), self._waited)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush_soon = False
        batch, self._pending, self._pending_rows = self._pending, [], 0
        if not batch:
            return
        self._recent.append(len(batch))
        self._expected = max(self._recent)
        rows = np.array([row for rows, _ in batch for row in rows], dtype=np.float64)
        try:
            probabilities = self._predict_proba(rows)
        except Exception as exc:  # noqa: BLE001 — a model fault fails this batch's requests, not the server
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self._resolve(batch, probabilities)
        self._observe(rows, probabilities)

    @staticmethod
    def _resolve(batch: list[tuple[list[Row], asyncio.Future[Predictions]]], probabilities: Matrix) -> None:
        classes = probabilities.argmax(axis=1)
        result = BatchResult(
            probabilities, classes, datetime.now(UTC).isoformat(), classes.tolist(), probabilities.tolist()
        )
        start = 0
        for rows, future in batch:
            end = start + len(rows)
            if not future.done():
                future.set_result(Predictions(result, start, end))
            start = end
