"""Prometheus metrics of one served version, labelled by model and version.

The label sets are fixed by the signature and a few constants, so cardinality stays
bounded. Label children are bound once here: a lookup per request would cost more than
the counting. The names, help texts and labels are the contract's (`modelctl.core.contract`), which the
alert rules and the dashboard build their queries from.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from modelctl.core import contract
from serving.loader import Matrix

Counts = npt.NDArray[np.intp]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LoopCounter:
    """A counter family of one version, optionally split by one more label, exported at scrape.

    The server updates its hot-path metrics only from the event loop's thread, and the scrape
    is answered on it too, so these need none of the client library's per-update locking
    (which cost more than the rest of the counting).
    """

    def __init__(
        self, metric: contract.Metric, values: tuple[str, ...], initial: tuple[Any, ...] = ()
    ) -> None:
        self.name, self.help, self.values = metric.name, metric.help, values
        self.labels = list(metric.label_names)
        self.split = len(metric.labels) == 1  # at most one label beyond model and version
        # Series exported at 0 from the start: Prometheus' rate() and increase() cannot count the
        # first increment of a series they have not seen before (its first sample is the baseline).
        self.counts: dict[Any, float] = dict.fromkeys(initial, 0.0) if self.split else {"": 0.0}

    def inc(self, key: Any, amount: float = 1) -> None:
        self.counts[key] = self.counts.get(key, 0.0) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, count in self.counts.items():
            family.add_metric([*self.values, str(key)] if self.split else list(self.values), count)
        yield family


# Batches of observations a LoopHistogram holds before counting them into its buckets.
FOLD_EVERY = 256


class LoopHistogram:
    """A histogram of one version updated from the event loop only (see LoopCounter); batches of
    observations are kept as they come and counted into buckets together, at the scrape or
    every FOLD_EVERY batches (one vectorized count instead of five array operations a batch)."""

    def __init__(self, metric: contract.Metric, values: tuple[str, ...], bounds: Sequence[float]) -> None:
        self.name, self.help = metric.name, metric.help
        self.names, self.values = list(metric.label_names), list(values)
        self.bounds = tuple(float(b) for b in bounds)
        self._edges = np.array(self.bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is above every bound
        self.sum = 0.0
        self._pending: list[npt.NDArray[np.float64]] = []

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_all(self, values: npt.NDArray[np.float64]) -> None:
        self._pending.append(values)
        if len(self._pending) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        values = np.concatenate(self._pending)
        self._pending.clear()
        found = np.bincount(np.searchsorted(self._edges, values, side="left"), minlength=len(self.counts))
        for index in np.flatnonzero(found).tolist():
            self.counts[index] += int(found[index])
        self.sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        self._fold()
        cumulative = list(itertools.accumulate(self.counts))
        buckets = [(repr(b), c) for b, c in zip(self.bounds, cumulative, strict=False)]
        family = HistogramMetricFamily(self.name, self.help, labels=self.names)
        family.add_metric(self.values, [*buckets, ("+Inf", cumulative[-1])], self.sum)
        yield family


class ServerMetrics:
    def __init__(
        self, model: str, version: str, sha256: str, features: list[str], classes: list[str]
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._labels = {"model": model, "version": version}
        self._errors = self._metric(contract.ERRORS)
        self._errors_by_type: dict[str, Any] = {}
        values = (model, version)
        # The codes the error ratio divides: both exist before the first request, and the first error.
        self._requests = LoopCounter(contract.REQUESTS, values, initial=(200, 500))
        self._predictions = LoopCounter(contract.PREDICTIONS, values)
        self._classes = classes
        self._predicted_class = LoopCounter(contract.PREDICTED_CLASS, values, initial=tuple(classes))
        self._duration = LoopHistogram(contract.DURATION, values, LATENCY_BUCKETS)
        self._score = LoopHistogram(contract.SCORE, values, SCORE_BUCKETS)
        self._batch_size = LoopHistogram(contract.BATCH_SIZE, values, BATCH_BUCKETS)
        for collector in (
            self._requests, self._predictions, self._predicted_class, self._duration, self._score, self._batch_size,
        ):  # fmt: skip
            self.registry.register(collector)
        out_of_distribution = self._metric(contract.OUT_OF_DISTRIBUTION)
        self._out_of_distribution = [out_of_distribution.labels(model, version, name) for name in features]
        self._feedback_family = self._metric(contract.FEEDBACK)
        self._feedback_value_family = self._metric(contract.FEEDBACK_VALUE)
        # Labels by the version that predicted them, whichever version's server took them: every
        # cell of this server's own version exists from the start, so rates never miss a first label.
        self._feedback: dict[str, tuple[list[list[Any]], Any]] = {}
        self._feedback_cells(version)
        # Versions whose series no scrape has seen yet, and the labels they wait to count.
        self._unscraped: set[str] = set()
        self._held: list[tuple[str, list[tuple[int, int]], float | None]] = []
        drift = self._metric(contract.FEATURE_DRIFT)
        self._drift = {name: drift.labels(model, version, name) for name in features}
        for child in self._drift.values():
            child.set(float("nan"))
        self._engine = self._metric(contract.ENGINE)
        self._parity = self._bound(self._metric(contract.PARITY_ERROR))
        self._metric(contract.INFO).labels(model, version, sha256).set(1)
        pauses = self._metric(contract.GC_PAUSES, GC_BUCKETS)
        self._gc_pauses = [pauses.labels(model, version, str(generation)) for generation in range(3)]
        self._gc_started = 0.0

    def _metric(self, metric: contract.Metric, buckets: tuple[float, ...] = ()) -> Any:
        """Register one of the contract's metrics, with its name, help and labels."""
        names = metric.label_names
        if metric.kind == "histogram":
            return Histogram(metric.name, metric.help, names, buckets=buckets, registry=self.registry)
        kind = {"counter": Counter, "gauge": Gauge, "summary": Summary}[metric.kind]
        return kind(metric.name, metric.help, names, registry=self.registry)

    def _bound(self, metric: Any) -> Any:
        return metric.labels(**self._labels)

    def request(self, code: int, seconds: float | None) -> None:
        """One /predict or infer request answered with `code` after `seconds` (None: not timed)."""
        self._requests.inc(code)
        if seconds is not None:
            self._duration.observe(seconds)

    def error(self, kind: str) -> None:
        child = self._errors_by_type.get(kind)
        if child is None:
            child = self._errors_by_type[kind] = self._errors.labels(**self._labels, type=kind)
        child.inc()

    def batch(self, probabilities: Matrix, positive_index: int, out_of_distribution: Counts) -> None:
        """One model call: its probabilities, and per feature the rows outside the reference range."""
        size = len(probabilities)
        self._batch_size.observe(size)
        self._predictions.inc("", size)
        by_class = np.bincount(probabilities.argmax(axis=1), minlength=len(self._classes))
        for index in np.flatnonzero(by_class).tolist():
            self._predicted_class.inc(self._classes[index], int(by_class[index]))
        if out_of_distribution.any():
            for index in np.flatnonzero(out_of_distribution).tolist():
                self._out_of_distribution[index].inc(int(out_of_distribution[index]))
        self._score.observe_all(probabilities[:, positive_index])

    def _feedback_cells(self, version: str) -> tuple[list[list[Any]], Any]:
        model, classes = self._labels["model"], self._classes
        cells = [[self._feedback_family.labels(model, version, a, p) for p in classes] for a in classes]
        self._feedback[version] = (cells, self._feedback_value_family.labels(model, version))
        return self._feedback[version]

    def feedback(self, version: str, pairs: list[tuple[int, int]], value: float | None) -> None:
        """Labels of predictions `version` made, as (actual, predicted) class indices, and the
        request's business value if sent.

        Another version's series are exported at 0 first: a label for a version this server has
        not counted yet is counted once a scrape has seen its zeros (Prometheus' rate() and
        increase() cannot count a series' first value).
        """
        if version not in self._feedback:
            self._feedback_cells(version)
            self._unscraped.add(version)
        if version in self._unscraped:
            self._held.append((version, pairs, value))
            return
        cells, values = self._feedback[version]
        for actual, predicted in pairs:
            cells[actual][predicted].inc()
        if value is not None:
            values.observe(value)

    def engine(self, name: str, fallback_from: str, parity_error: float) -> None:
        """Which engine predicts, the compiled one it replaces if any, and the parity error measured."""
        self._engine.labels(*self._labels.values(), name, fallback_from).set(1)
        self._parity.set(parity_error)

    def drift(self, statistics: dict[str, float]) -> None:
        for feature, value in statistics.items():
            if feature in self._drift:
                self._drift[feature].set(value)

    def render(self) -> bytes:
        """The scrape's text; labels held until their version's series had been scraped count now."""
        text = generate_latest(self.registry)
        self._unscraped.clear()
        held, self._held = self._held, []
        for version, pairs, value in held:
            self.feedback(version, pairs, value)
        return text

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
