"""The shadow report: how a mirrored version's predictions differ from the primary's, on the same traffic.

Pure: `compare` takes each side's counters over the window (summed across replicas, as
`modelctl.core.analysis.window` builds them from Prometheus) and, where the prediction log is on, the
logged predictions of both sides (`parse_log`), and returns a `ShadowReport`.

From the counters (every request the shadow saw, but not paired):
- per-class prediction rates, with a test of homogeneity of the two class distributions
  (`drift.statistics.category_test`: Pearson's chi-squared, Fisher's exact test where counts are small);
- the positive-class score distributions from the score histograms: the Kolmogorov–Smirnov
  distance between the two bucketed CDFs with its p-value (`drift.statistics.ks_pvalue`), and the
  population stability index over the buckets (`drift.statistics.psi_from_counts`);
- latency p50 and p99 by Prometheus' `histogram_quantile` interpolation (`buckets.histogram_quantile`).

The shadow's requests are a subset of the primary's, so the two samples are positively
correlated, not independent as these two-sample tests assume: the variance of a difference is then
smaller than the tests assume, and their p-values are conservative (a difference they find is real).
Bucketing can only hide differences: the KS distance at bucket bounds is at most the true one.

From the prediction log (the same requests on both sides, chosen by a hash of the request id):
- the per-request agreement rate with its Wilson score interval (`scipy.stats.binomtest`);
- the confusion between the primary's and the shadow's classes;
- McNemar's exact test of whether the two versions predict the positive class equally often on
  the same requests (McNemar 1947; the binomial test on the discordant pairs).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from scipy import stats

from modelctl.core import contract
from modelctl.core.analysis import window
from modelctl.core.analysis.buckets import histogram_quantile
from modelctl.core.contract import PREDICTION_LOG_KEYS
from modelctl.core.drift.statistics import category_test, ks_pvalue, psi_from_counts

Bounds = tuple[float, ...]
# The contract's queries a report runs, each per version over the window.
QUERIES = (
    "requests_in_window",
    "predicted_class_in_window",
    "score_buckets_in_window",
    "latency_buckets_in_window",
)


@dataclass(frozen=True)
class Side:
    """One side's counters over the window (cumulative histograms, as Prometheus exposes them).

    `versions` are the versions summed (the primary side may be several serving versions).
    `score_le` / `score` and `latency_le` / `latency` are bucket bounds (the last +Inf) and
    cumulative counts of the same length.
    """

    versions: tuple[str, ...]
    requests: float
    classes: Mapping[str, float]
    score_le: Bounds
    score: tuple[float, ...]
    latency_le: Bounds
    latency: tuple[float, ...]


@dataclass(frozen=True)
class Logged:
    """One logged row: which version predicted which class and positive-class score."""

    request_id: str
    row: int
    version: str
    predicted: str
    score: float


@dataclass(frozen=True)
class ClassRate:
    name: str
    primary: float  # rows predicted as this class
    shadow: float
    primary_rate: float  # share of the side's rows
    shadow_rate: float


@dataclass(frozen=True)
class Test:
    """A two-sample test: its name, statistic and p-value (None when there is nothing to test)."""

    name: str
    statistic: float | None
    p_value: float | None


@dataclass(frozen=True)
class Agreement:
    """Per-request comparison on the rows both sides logged."""

    pairs: int
    agreement: float
    interval: tuple[float, float]  # 95% Wilson score interval
    confusion: dict[str, dict[str, int]]  # primary class -> shadow class -> rows
    positive_test: Test  # McNemar's exact test on the positive class
    mean_score_difference: float  # shadow minus primary
    primary_only: int  # logged by the primary only (the share not mirrored, or lost)
    shadow_only: int


@dataclass(frozen=True)
class ShadowReport:
    """Everything `modelctl shadow report` prints, as plain data (`to_json`)."""

    model: str
    primary: tuple[str, ...]
    shadow: str
    percent: float
    positive_class: str
    requests: dict[str, float]
    rows: dict[str, float]
    classes: list[ClassRate]
    class_test: Test
    score_le: Bounds
    scores: dict[str, list[float]]  # side -> rows per score bucket (not cumulative)
    score_test: Test
    psi: float | None
    latency: dict[str, dict[str, float | None]]  # side -> {"p50", "p99"} in seconds
    agreement: Agreement | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["score_le"] = [b if math.isfinite(b) else "+Inf" for b in self.score_le]
        return data


def queries(model: str, seconds: float, bound: str = contract.LOOKBACK_DELTA) -> dict[str, str]:
    """The PromQL of each of `QUERIES` over every version of `model` for the last `seconds`, the
    start's value read at most `bound` before it (the parts `window.window_counts` reads)."""
    return window.queries(model, seconds, QUERIES, bound)


def side(answers: Mapping[str, Sequence[window.Sample]], versions: Sequence[str]) -> Side:
    """One side's counters from the answers to `queries`, summed over `versions` (and replicas)."""
    wanted = set(versions)
    requests = window.by_version(answers.get("requests_in_window", ()))
    label = contract.PREDICTED_CLASS.labels[0]
    classes: dict[str, float] = {}
    for labels, value in answers.get("predicted_class_in_window", ()):
        if labels.get("version") in wanted and label in labels and math.isfinite(value):
            classes[labels[label]] = classes.get(labels[label], 0.0) + value

    def summed(name: str) -> tuple[Bounds, tuple[float, ...]]:
        per_version = window.histograms(answers.get(name, ()))
        bounds = sorted({b for v in wanted for b in per_version.get(v, {})} | {math.inf})
        totals = np.zeros(len(bounds))
        for v in wanted:
            at = per_version.get(v, {})
            totals += np.maximum.accumulate([at.get(b, 0.0) for b in bounds])
        return tuple(bounds), tuple(totals.tolist())

    score_le, score = summed("score_buckets_in_window")
    latency_le, latency = summed("latency_buckets_in_window")
    return Side(
        versions=tuple(versions),
        requests=sum(requests.get(v, 0.0) for v in wanted),
        classes=classes,
        score_le=score_le,
        score=score,
        latency_le=latency_le,
        latency=latency,
    )


def parse_log(lines: Iterable[bytes], model: str, since: datetime | None = None) -> list[Logged]:
    """The prediction-log records of `model` among `lines` (other lines are skipped), those
    timed at or after `since` only when given.

    Lines are JSON objects with the keys `contract.PREDICTION_LOG_KEYS` (see serving/predlog.py);
    anything else a log stream holds (the server's own log lines, `kubectl logs` of several
    containers) is ignored.
    """
    records = []
    for line in lines:
        text = line.strip()
        if not text.startswith(b"{"):
            continue
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(data, dict) or set(data) != set(PREDICTION_LOG_KEYS) or data["model"] != model:
            continue
        try:
            if since is not None and datetime.fromisoformat(data["time"]) < since:
                continue
            record = Logged(
                str(data["request_id"]),
                int(data["row"]),
                str(data["version"]),
                str(data["class"]),
                float(data["score"]),
            )
        except (TypeError, ValueError):  # a line that only looks like a record
            continue
        records.append(record)
    return records


def compare(
    model: str,
    primary: Side,
    shadow: Side,
    *,
    class_names: Sequence[str],
    positive_class: str,
    percent: float,
    logged: Sequence[Logged] | None = None,
) -> ShadowReport:
    """The shadow report of `shadow` against `primary` over one window.

    Parameters
    ----------
    class_names
        The model's classes, in the signature's order.
    positive_class
        The class whose probability is the score.
    percent
        The mirror's percentage (for the notes: the shadow sees that share of requests).
    logged
        Prediction-log records of both sides, or None when no log is read.
    """
    p_counts = np.array([primary.classes.get(c, 0.0) for c in class_names])
    s_counts = np.array([shadow.classes.get(c, 0.0) for c in class_names])
    rows = {"primary": float(p_counts.sum()), "shadow": float(s_counts.sum())}
    classes = [
        ClassRate(name, float(p), float(s), _share(p, rows["primary"]), _share(s, rows["shadow"]))
        for name, p, s in zip(class_names, p_counts, s_counts, strict=True)
    ]
    notes = []
    if rows["primary"] == 0:
        notes.append(
            "no predictions in the window on either side yet; send traffic, or wait for Prometheus' next scrape"
        )
    elif rows["shadow"] == 0:
        notes.append(f"the shadow predicted nothing in the window; is it mirrored ({percent:g}%) and up?")
    if all(rows.values()):
        name, statistic, p_value = category_test(np.r_[p_counts, 0.0], np.r_[s_counts, 0.0])
        class_test = Test(name, statistic, p_value)
    else:
        class_test = Test("chi2", None, None)
    score_le, p_bins, s_bins = _common_bins(primary, shadow)
    score_test, psi = _score_test(p_bins, s_bins)
    latency = {
        side: {
            "p50": _quantile(counts.latency_le, counts.latency, 0.5),
            "p99": _quantile(counts.latency_le, counts.latency, 0.99),
        }
        for side, counts in (("primary", primary), ("shadow", shadow))
    }
    agreement = None
    if logged is not None:
        agreement = _agreement(logged, set(primary.versions), shadow.versions[0], positive_class)
        if agreement.pairs == 0:
            notes.append(
                "no request is in both versions' prediction logs; enable it on both, with the same sample"
            )
    return ShadowReport(
        model=model,
        primary=primary.versions,
        shadow=shadow.versions[0],
        percent=percent,
        positive_class=positive_class,
        requests={"primary": primary.requests, "shadow": shadow.requests},
        rows=rows,
        classes=classes,
        class_test=class_test,
        score_le=score_le,
        scores={"primary": p_bins.tolist(), "shadow": s_bins.tolist()},
        score_test=score_test,
        psi=psi,
        latency=latency,
        agreement=agreement,
        notes=notes,
    )


def _share(count: float, total: float) -> float:
    return float(count / total) if total else math.nan


def _quantile(bounds: Bounds, cumulative: tuple[float, ...], q: float) -> float | None:
    if not cumulative or cumulative[-1] <= 0:
        return None
    return histogram_quantile(np.array(bounds), np.array(cumulative), q)


def _common_bins(primary: Side, shadow: Side) -> tuple[Bounds, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Both score histograms on the union of their bounds, as rows per bucket."""
    bounds = tuple(sorted(set(primary.score_le) | set(shadow.score_le) | {math.inf}))

    def per_bucket(side: Side) -> np.ndarray[Any, Any]:
        at = dict(zip(side.score_le, side.score, strict=True))
        cumulative = np.maximum.accumulate([at.get(b, 0.0) for b in bounds]) if bounds else np.zeros(0)
        return np.diff(np.r_[0.0, cumulative])

    return bounds, per_bucket(primary), per_bucket(shadow)


def _score_test(primary: np.ndarray[Any, Any], shadow: np.ndarray[Any, Any]) -> tuple[Test, float | None]:
    n, m = float(primary.sum()), float(shadow.sum())
    if n == 0 or m == 0:
        return Test("ks", None, None), None
    distance = float(np.max(np.abs(np.cumsum(primary) / n - np.cumsum(shadow) / m)))
    return Test("ks", distance, ks_pvalue(distance, round(n), round(m))), psi_from_counts(primary, shadow)


def _agreement(logged: Sequence[Logged], primary: set[str], shadow: str, positive: str) -> Agreement:
    by_side: dict[str, dict[tuple[str, int], Logged]] = {"primary": {}, "shadow": {}}
    for record in logged:
        side = "shadow" if record.version == shadow else "primary" if record.version in primary else None
        if side is not None:
            by_side[side][(record.request_id, record.row)] = record
    both = sorted(by_side["primary"].keys() & by_side["shadow"].keys())
    pairs = [(by_side["primary"][k], by_side["shadow"][k]) for k in both]
    confusion: dict[str, Counter[str]] = {}
    for p, s in pairs:
        confusion.setdefault(p.predicted, Counter())[s.predicted] += 1
    same = sum(p.predicted == s.predicted for p, s in pairs)
    if pairs:
        ci = stats.binomtest(same, len(pairs)).proportion_ci(0.95, method="wilson")
        interval = (float(ci.low), float(ci.high))
    else:
        interval = (math.nan, math.nan)
    return Agreement(
        pairs=len(pairs),
        agreement=same / len(pairs) if pairs else math.nan,
        interval=interval,
        confusion={k: dict(sorted(v.items())) for k, v in sorted(confusion.items())},
        positive_test=_mcnemar(pairs, positive),
        mean_score_difference=float(np.mean([s.score - p.score for p, s in pairs])) if pairs else math.nan,
        primary_only=len(by_side["primary"].keys() - by_side["shadow"].keys()),
        shadow_only=len(by_side["shadow"].keys() - by_side["primary"].keys()),
    )


def _mcnemar(pairs: Sequence[tuple[Logged, Logged]], positive: str) -> Test:
    """McNemar's exact test: of the pairs where only one side predicts `positive`, is either side
    the one more often than half the time? (Two-sided binomial test; McNemar 1947.)"""
    only_primary = sum(p.predicted == positive and s.predicted != positive for p, s in pairs)
    only_shadow = sum(s.predicted == positive and p.predicted != positive for p, s in pairs)
    discordant = only_primary + only_shadow
    if discordant == 0:
        return Test("mcnemar", 0.0, 1.0 if pairs else None)
    return Test(
        "mcnemar", float(only_shadow - only_primary), float(stats.binomtest(only_shadow, discordant).pvalue)
    )
