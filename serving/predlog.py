"""The prediction log: a sampled JSON-lines record of what this version predicted, per request.

One line per predicted row, with the keys `contract.PREDICTION_LOG_KEYS`:
`{"time": "<ISO 8601>", "request_id": "...", "row": 0, "model": "churn", "version": "1.1.0",
"class": "yes", "score": 0.83}` (`score` is the positive class's probability, as in the
`model_prediction_score` histogram). `modelctl shadow report` joins the lines of a primary and its
shadow on (request_id, row) to measure how often they agree.

Sampling is decided by a hash of the request id, not a random draw, so every replica of every
version keeps the same requests: a mirrored request carries the primary's `x-request-id` (Envoy
copies the headers into the mirrored request, in a cluster and on the local stack), so the
primary and the shadow log the same requests, and per-request agreement can be computed from a
sample of either.

Where the lines go: a file, or `-` for the server's standard output (its own log goes to stderr).
In a cluster, standard output is the choice: every cluster's log pipeline (Fluent Bit, Vector,
Promtail and the like) already collects containers' standard output with the pod's labels, and
`kubectl logs -l app=<model>` reads it; it needs no volume, no sidecar and no extra endpoint. (A
file on the pod's volume would need a sidecar to leave the pod; a URL to POST to, as KServe's
payload logger does, needs a receiver running beside the cluster.) Locally, `modelctl up` keeps
each server's output in its log file, where `modelctl shadow report` reads it.

Writes leave the event loop's hot path: a sampled request appends one tuple to a buffer; once
per `interval_s` a task takes the buffer, and a worker thread serializes and writes it. If the
destination falls behind by `max_buffered` rows, newer rows are dropped and counted in the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import orjson

from modelctl.core.contract import PREDICTION_LOG_KEYS
from modelctl.core.errors import UserError
from serving.batcher import Predictions

log = logging.getLogger("serving")
STDOUT = "-"
_HASH_RANGE = 1 << 64


def sampled(request_id: str, fraction: float) -> bool:
    """Whether the request `request_id` is in the sample of `fraction` (0 to 1) of all requests.

    The same id gives the same answer in every process and version: the first 8 bytes of its
    BLAKE2b digest, read as an integer below 2**64, fall under `fraction` * 2**64.
    """
    if fraction >= 1:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * _HASH_RANGE


class PredictionLog:
    """Sampled predictions of one served version, written as JSON lines to `destination`.

    Parameters
    ----------
    destination
        A file path (appended to, created with its folder) or `-` for standard output.

    Raises
    ------
    UserError
        The destination cannot be opened for appending.
    fraction
        The share of requests logged, 0 to 1, decided by `sampled`.
    model, version, classes, positive_index
        What the server serves: class names in the order of the probabilities' columns.
    interval_s
        Seconds between writes.
    max_buffered
        Rows held between writes before newer ones are dropped.
    """

    def __init__(
        self,
        destination: str,
        fraction: float,
        *,
        model: str,
        version: str,
        classes: Sequence[str],
        positive_index: int,
        interval_s: float = 1.0,
        max_buffered: int = 100_000,
    ) -> None:
        self.destination = destination
        self.fraction = fraction
        self.model, self.version = model, version
        self.classes = list(classes)
        self.positive_index = positive_index
        self.interval_s = interval_s
        self.max_buffered = max_buffered
        self._pending: list[tuple[str, Predictions]] = []
        self._rows = 0
        self.dropped = 0
        self._lock = threading.Lock()  # the final write may overlap a cancelled thread's
        self._file: BinaryIO | None = self._open()

    def _open(self) -> BinaryIO:
        """The destination, opened now so that an unusable path stops the server at start."""
        if self.destination == STDOUT:
            return sys.stdout.buffer
        path = Path(self.destination)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("ab")
        except OSError as exc:
            raise UserError(
                self.destination,
                f"cannot append to the prediction log ({exc.strerror})",
                "pass a writable --prediction-log path, or '-' for standard output",
            ) from None

    def record(self, request_id: str, result: Predictions) -> None:
        """Keep `result`'s rows for the next write if `request_id` is in the sample (hot path)."""
        if not sampled(request_id, self.fraction):
            return
        rows = len(result.classes)
        if self._rows + rows > self.max_buffered:
            self.dropped += rows
            return
        self._pending.append((request_id, result))
        self._rows += rows

    def take(self) -> list[tuple[str, Predictions]]:
        """What was kept since the last call (the buffer is emptied; on the event loop's thread)."""
        pending, self._pending, self._rows = self._pending, [], 0
        return pending

    def lines(self, pending: list[tuple[str, Predictions]]) -> bytes:
        """The JSON lines of `pending`'s rows (pure: it may run in a worker thread)."""
        time, request, row, model, version, predicted, score = PREDICTION_LOG_KEYS
        out = []
        for request_id, result in pending:
            scores = result.probabilities[:, self.positive_index].tolist()
            for index, (kind, value) in enumerate(zip(result.classes.tolist(), scores, strict=True)):
                line = {
                    time: result.timestamp,
                    request: request_id,
                    row: index,
                    model: self.model,
                    version: self.version,
                    predicted: self.classes[kind],
                    score: value,
                }
                out.append(orjson.dumps(line))
        out.append(b"")
        return b"\n".join(out)

    def flush(self, pending: list[tuple[str, Predictions]]) -> None:
        """Serialize and write `pending` (blocking: call it from a worker thread)."""
        self.write(self.lines(pending))

    def write(self, data: bytes) -> None:
        """Append `data` to the destination and flush it (blocking: call it from a worker thread)."""
        if not data:
            return
        with self._lock:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = self._open()
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:  # a full disk loses log lines, never predictions
            log.error("prediction log: %d bytes not written to %s: %s", len(data), self.destination, exc)

    async def run(self) -> None:
        """Write what was kept every `interval_s` until cancelled, then write the rest."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                await asyncio.to_thread(self.flush, self.take())
                self._report_drops()
        finally:
            self.close()

    def close(self) -> None:
        """Write what is left, and close a file this log opened."""
        self.flush(self.take())
        self._report_drops()
        with self._lock:
            if self._file is not None and self._file is not sys.stdout.buffer:
                self._file.close()
            self._file = None

    def _report_drops(self) -> None:
        if self.dropped:
            log.warning("prediction log: %d rows dropped, %s fell behind", self.dropped, self.destination)
            self.dropped = 0
