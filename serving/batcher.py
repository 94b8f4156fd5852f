"""Gather concurrent requests into one model call.

One `predict_proba` on a batch of 64 rows costs about what one row costs alone, so the
server waits at most `max_wait` (or one turn of the event loop) for company, then
predicts everything pending at once. The prediction is the argmax of the probabilities,
exactly what scikit-learn's own `predict` returns, so the model is never called twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from serving.inputs import Row
from serving.loader import Matrix

Predictor = Callable[[Matrix], Matrix]
# Called with every batch's rows and probabilities, for metrics and the drift window.
Observer = Callable[[Matrix, Matrix], None]


@dataclass(frozen=True)
class Predictions:
    probabilities: Matrix
    classes: npt.NDArray[np.intp]
    timestamp: str


class Batcher:
    def __init__(self, predict_proba: Predictor, observe: Observer, max_rows: int, max_wait: float) -> None:
        self._predict_proba = predict_proba
        self._observe = observe
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._pending: list[tuple[list[Row], asyncio.Future[Predictions]]] = []
        self._pending_rows = 0
        self._flush_handle: asyncio.Handle | None = None

    def submit(self, rows: list[Row]) -> asyncio.Future[Predictions]:
        """A future for these rows' predictions, made in the next batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Predictions] = loop.create_future()
        self._pending.append((rows, future))
        self._pending_rows += len(rows)
        if self._pending_rows >= self.max_rows:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = (
                loop.call_later(self.max_wait, self.flush)
                if self.max_wait > 0
                else loop.call_soon(self.flush)
            )
        return future

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending, self._pending_rows = self._pending, [], 0
        if not batch:
            return
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
        timestamp = datetime.now(UTC).isoformat()
        start = 0
        for rows, future in batch:
            end = start + len(rows)
            if not future.done():
                future.set_result(Predictions(probabilities[start:end], classes[start:end], timestamp))
            start = end
