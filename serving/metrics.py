"""Prometheus metrics of one served version, labelled by model and version.

The label sets are fixed by the signature and a few constants, so cardinality stays
bounded. Label children are bound once here: a lookup per request would cost more than
the counting. The names, help texts and labels are the contract's (`modelctl.core.contract`), which the
alert rules and the dashboard build their queries from.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from modelctl.core import contract
from serving.loader import Matrix

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    def __init__(self, model: str, version: str, sha256: str, features: list[str]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._labels = {"model": model, "version": version}
        self._requests = self._metric(contract.REQUESTS)
        self._errors = self._metric(contract.ERRORS)
        self._requests_by_code: dict[int, Any] = {}
        self._errors_by_type: dict[str, Any] = {}
        self._predictions = self._bound(self._metric(contract.PREDICTIONS))
        self._duration = self._bound(self._metric(contract.DURATION, LATENCY_BUCKETS))
        self._score = self._bound(self._metric(contract.SCORE, SCORE_BUCKETS))
        self._batch_size = self._bound(self._metric(contract.BATCH_SIZE, BATCH_BUCKETS))
        self._out_of_distribution = self._bound(self._metric(contract.OUT_OF_DISTRIBUTION))
        self._feedback = self._bound(self._metric(contract.FEEDBACK))
        self._accuracy, self._precision, self._recall = (
            self._bound(self._metric(contract.LIVE_QUALITY[name]))
            for name in ("accuracy", "precision", "recall")
        )
        for gauge in (self._accuracy, self._precision, self._recall):
            gauge.set(float("nan"))  # no feedback yet is unknown, not zero
        drift = self._metric(contract.FEATURE_DRIFT)
        self._drift = {name: drift.labels(model, version, name) for name in features}
        for child in self._drift.values():
            child.set(float("nan"))
        self._metric(contract.INFO).labels(model, version, sha256).set(1)
        pauses = self._metric(contract.GC_PAUSES, GC_BUCKETS)
        self._gc_pauses = [pauses.labels(model, version, str(generation)) for generation in range(3)]
        self._gc_started = 0.0

    def _metric(self, metric: contract.Metric, buckets: tuple[float, ...] = ()) -> Any:
        """Register one of the contract's metrics, with its name, help and labels."""
        names = metric.label_names
        if metric.kind == "histogram":
            return Histogram(metric.name, metric.help, names, buckets=buckets, registry=self.registry)
        kind = Counter if metric.kind == "counter" else Gauge
        return kind(metric.name, metric.help, names, registry=self.registry)

    def _bound(self, metric: Any) -> Any:
        return metric.labels(**self._labels)

    def request(self, code: int, seconds: float | None) -> None:
        """One /predict or infer request answered with `code` after `seconds` (None: not timed)."""
        child = self._requests_by_code.get(code)
        if child is None:
            child = self._requests_by_code[code] = self._requests.labels(**self._labels, code=str(code))
        child.inc()
        if seconds is not None:
            self._duration.observe(seconds)

    def error(self, kind: str) -> None:
        child = self._errors_by_type.get(kind)
        if child is None:
            child = self._errors_by_type[kind] = self._errors.labels(**self._labels, type=kind)
        child.inc()

    def batch(self, probabilities: Matrix, positive_index: int, out_of_distribution: int) -> None:
        size = len(probabilities)
        self._batch_size.observe(size)
        self._predictions.inc(size)
        if out_of_distribution:
            self._out_of_distribution.inc(out_of_distribution)
        for score in probabilities[:, positive_index].tolist():
            self._score.observe(score)

    def feedback(self, count: int, accuracy: float, precision: float, recall: float) -> None:
        self._feedback.inc(count)
        self._accuracy.set(accuracy)
        self._precision.set(precision)
        self._recall.set(recall)

    def drift(self, statistics: dict[str, float]) -> None:
        for feature, value in statistics.items():
            if feature in self._drift:
                self._drift[feature].set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch_gc(self) -> None:
        """Time every collection: full collections of a large model were the whole p99 tail."""
        gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_pauses[info["generation"]].observe(time.perf_counter() - self._gc_started)
