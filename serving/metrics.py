"""Prometheus metrics of one served version, labelled by model and version.

The label sets are fixed by the signature and a few constants, so cardinality stays
bounded. Label children are bound once here: a lookup per request would cost more than
the counting. Alert rules and dashboards use exactly these names (see serving/README.md).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

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
        names = ("model", "version")
        self._requests = Counter(
            "model_requests_total",
            "Prediction requests by HTTP status code.",
            [*names, "code"],
            registry=self.registry,
        )
        self._errors = Counter(
            "model_errors_total",
            "Refused or failed requests by error type.",
            [*names, "type"],
            registry=self.registry,
        )
        self._requests_by_code: dict[int, Any] = {}
        self._errors_by_type: dict[str, Any] = {}
        self._predictions = self._bound(
            Counter("model_predictions_total", "Rows predicted.", names, registry=self.registry)
        )
        self._duration = self._bound(
            Histogram(
                "model_prediction_duration_seconds",
                "Time from request received to response ready, for /predict and /v2 infer.",
                names,
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            )
        )
        self._score = self._bound(
            Histogram(
                "model_prediction_score",
                "Predicted probability of the positive class.",
                names,
                buckets=SCORE_BUCKETS,
                registry=self.registry,
            )
        )
        self._batch_size = self._bound(
            Histogram(
                "model_batch_size",
                "Rows per model call.",
                names,
                buckets=BATCH_BUCKETS,
                registry=self.registry,
            )
        )
        self._out_of_distribution = self._bound(
            Counter(
                "model_out_of_distribution_total",
                "Rows with a feature outside the reference profile's range.",
                names,
                registry=self.registry,
            )
        )
        self._feedback = self._bound(
            Counter("model_feedback_total", "Ground-truth labels received.", names, registry=self.registry)
        )
        self._accuracy, self._precision, self._recall = (
            self._bound(Gauge(name, help, names, registry=self.registry))
            for name, help in (
                ("model_accuracy", "Live accuracy over the recent feedback window."),
                ("model_precision", "Live precision of the positive class over the recent feedback window."),
                ("model_recall", "Live recall of the positive class over the recent feedback window."),
            )
        )
        for gauge in (self._accuracy, self._precision, self._recall):
            gauge.set(float("nan"))  # no feedback yet is unknown, not zero
        drift = Gauge(
            "model_feature_drift",
            "Drift statistic of each feature over the sliding window against the reference profile.",
            [*names, "feature"],
            registry=self.registry,
        )
        self._drift = {name: drift.labels(model, version, name) for name in features}
        for child in self._drift.values():
            child.set(float("nan"))
        Gauge("model_info", "The served version.", [*names, "sha256"], registry=self.registry).labels(
            model, version, sha256
        ).set(1)
        pauses = Histogram(
            "model_gc_pause_seconds",
            "Garbage-collector pauses by generation.",
            [*names, "generation"],
            buckets=GC_BUCKETS,
            registry=self.registry,
        )
        self._gc_pauses = [pauses.labels(model, version, str(generation)) for generation in range(3)]
        self._gc_started = 0.0

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
