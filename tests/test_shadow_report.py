"""The shadow report's statistics, against scipy on the same data, and the prediction-log reader."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from scipy import stats

from modelctl.core.analysis.shadow import Logged, ShadowReport, Side, compare, parse_log
from modelctl.core.contract import PREDICTION_LOG_KEYS
from serving.metrics import LATENCY_BUCKETS, SCORE_BUCKETS

CLASSES = ("no", "yes")
SCORE_LE = (*SCORE_BUCKETS, math.inf)
LATENCY_LE = (*LATENCY_BUCKETS, math.inf)


def side(version: str, scores: np.ndarray, latencies: np.ndarray, threshold: float = 0.5) -> Side:
    """A side's counters as the server counts them: the score and latency histograms, the classes."""
    yes = float(np.sum(scores >= threshold))
    return Side(
        versions=(version,),
        requests=float(scores.size),
        classes={"no": scores.size - yes, "yes": yes},
        score_le=SCORE_LE,
        score=tuple(float(np.sum(scores <= b)) for b in SCORE_LE),
        latency_le=LATENCY_LE,
        latency=tuple(float(np.sum(latencies <= b)) for b in LATENCY_LE),
    )


def report_of(
    primary_scores: np.ndarray,
    shadow_scores: np.ndarray,
    latencies: tuple[np.ndarray, np.ndarray] | None = None,
    logged: list[Logged] | None = None,
) -> ShadowReport:
    lat = latencies or (np.full(10, 0.004), np.full(10, 0.004))
    return compare(
        "churn",
        side("v1", primary_scores, lat[0]),
        side("v2", shadow_scores, lat[1]),
        class_names=CLASSES,
        positive_class="yes",
        percent=25,
        logged=logged,
    )


def bucketed(values: np.ndarray) -> np.ndarray:
    """Each value replaced by the upper bound of its bucket (what the histogram keeps of it)."""
    bounds = np.array(SCORE_LE[:-1])
    return bounds[np.minimum(np.searchsorted(bounds, values, side="left"), bounds.size - 1)]


@pytest.fixture
def samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(15)
    return rng.beta(2, 5, 4000), rng.beta(2.6, 5, 1000)


def test_class_rates_and_their_test_match_scipy(samples: tuple[np.ndarray, np.ndarray]) -> None:
    primary_scores, shadow_scores = samples
    report = report_of(primary_scores, shadow_scores)
    table = [[c.primary for c in report.classes], [c.shadow for c in report.classes]]
    chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    assert report.class_test.name == "chi2"
    assert report.class_test.statistic == pytest.approx(chi2, rel=1e-12)
    assert report.class_test.p_value == pytest.approx(p_value, rel=1e-9)
    assert report.classes[1].shadow_rate == pytest.approx(np.mean(shadow_scores >= 0.5))
    assert report.agreement is None


def test_the_score_test_is_ks_on_what_the_buckets_keep(samples: tuple[np.ndarray, np.ndarray]) -> None:
    primary_scores, shadow_scores = samples
    report = report_of(primary_scores, shadow_scores)
    expected = stats.ks_2samp(bucketed(primary_scores), bucketed(shadow_scores))
    assert report.score_test.statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert report.score_test.p_value is not None
    assert report.score_test.p_value < 1e-6  # a real shift of the scores, 1000 rows
    # Bucketing never makes the distance larger than on the raw scores.
    assert report.score_test.statistic <= stats.ks_2samp(primary_scores, shadow_scores).statistic + 1e-12
    same = report_of(primary_scores[:2000], primary_scores[2000:])
    assert same.score_test.p_value is not None
    assert same.score_test.p_value > 0.01


def test_latency_quantiles_interpolate_like_prometheus() -> None:
    scores = np.full(100, 0.3)
    latencies = np.r_[np.full(50, 0.0015), np.full(50, 0.004)]
    report = report_of(scores, scores, (latencies, latencies * 2))
    # Half the requests are at or below the 0.002 bound, all of the rest under 0.005.
    assert report.latency["primary"]["p50"] == pytest.approx(0.002)
    assert report.latency["primary"]["p99"] == pytest.approx(0.003 + 0.002 * 0.98)
    assert report.latency["shadow"]["p50"] == pytest.approx(0.003)


def logged(version: str, classes: list[str], scores: list[float]) -> list[Logged]:
    return [Logged(f"r{i}", 0, version, c, s) for i, (c, s) in enumerate(zip(classes, scores, strict=True))]


def test_agreement_confusion_and_mcnemar_on_the_same_requests() -> None:
    primary = ["yes"] * 30 + ["no"] * 60 + ["yes"] * 10
    shadow = ["yes"] * 30 + ["no"] * 60 + ["no"] * 10  # the shadow says "no" where 10 said "yes"
    records = logged("v1", primary, [0.8] * 100) + logged("v2", shadow, [0.6] * 100)[20:]
    report = report_of(np.zeros(0), np.zeros(0), (np.zeros(0), np.zeros(0)), records)
    agreement = report.agreement
    assert agreement is not None
    # Only the 80 requests the shadow logged (the last 80) are paired; of those 10 disagree.
    assert (agreement.pairs, agreement.primary_only, agreement.shadow_only) == (80, 20, 0)
    assert agreement.agreement == pytest.approx(70 / 80)
    assert agreement.confusion == {"no": {"no": 60}, "yes": {"no": 10, "yes": 10}}
    assert agreement.interval[0] < 70 / 80 < agreement.interval[1]
    # McNemar: 10 discordant pairs, all one way: p = 2 * 0.5**10.
    assert agreement.positive_test.p_value == pytest.approx(2 * 0.5**10)
    assert agreement.mean_score_difference == pytest.approx(-0.2)
    assert report.notes  # nothing counted in the window


def test_the_log_reader_keeps_only_records_of_the_model() -> None:
    record = dict(zip(PREDICTION_LOG_KEYS, ("t", "r1", 0, "churn", "v1", "yes", 0.9), strict=True))
    lines = [
        b"2026-11-29 INFO serving: serving churn v1",
        orjson.dumps(record),
        orjson.dumps({**record, "model": "other"}),
        orjson.dumps({"request_id": "r1"}),
        b"{not json",
        b"",
    ]
    assert parse_log(lines, "churn") == [Logged("r1", 0, "v1", "yes", 0.9)]


@pytest.mark.parametrize(
    ("primary", "shadow", "note"),
    [
        (0, 0, "no predictions in the window on either side yet"),
        (20, 0, "the shadow predicted nothing in the window; is it mirrored (25%) and up?"),
    ],
    ids=["before the first scrape", "shadow silent"],
)
def test_an_empty_side_is_explained(primary: int, shadow: int, note: str) -> None:
    rng = np.random.default_rng(11)
    report = report_of(rng.random(primary), rng.random(shadow))
    [window_note] = [n for n in report.notes if "in the window" in n]
    assert window_note.startswith(note)
