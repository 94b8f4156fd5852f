"""The A/B experiment analysis: metrics against scikit-learn, decisions on snapshots, the plan,
and (simulated) error rates and sample sizes under a look every 100 labels."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

from bench.ab import bench
from modelctl.core.analysis import experiment
from modelctl.core.errors import UserError, UserErrors
from tests.test_judge import arm as judged_arm

CONFUSION = {("fraud", "fraud"): 40, ("fraud", "ok"): 10, ("ok", "fraud"): 20, ("ok", "ok"): 130}


def _labels(cells: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    actual = [a for (a, _), n in cells.items() for _ in range(n)]
    predicted = [p for (_, p), n in cells.items() for _ in range(n)]
    return actual, predicted


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("accuracy", skm.accuracy_score),
        ("precision", lambda y, p: skm.precision_score(y, p, pos_label="fraud")),
        ("recall", lambda y, p: skm.recall_score(y, p, pos_label="fraud")),
        ("f1", lambda y, p: skm.f1_score(y, p, pos_label="fraud")),
    ],
)
def test_metrics_match_scikit_learn(metric: str, reference: Any) -> None:
    actual, predicted = _labels(CONFUSION)
    found = experiment.estimate(metric, CONFUSION, "fraud")
    assert found.value == pytest.approx(reference(actual, predicted), abs=1e-12)


def test_the_variance_is_the_spread_of_resampled_metrics() -> None:
    """The delta-method variance agrees with a bootstrap of the labelled requests (within 20%)."""
    actual, predicted = (np.array(x) for x in _labels(CONFUSION))
    rng = np.random.default_rng(3)
    for metric, score in (("f1", skm.f1_score), ("precision", skm.precision_score)):
        draws = [
            score(actual[i], predicted[i], pos_label="fraud")
            for i in (rng.integers(0, actual.size, actual.size) for _ in range(500))
        ]
        assert experiment.estimate(metric, CONFUSION, "fraud").variance == pytest.approx(
            np.var(draws), rel=0.2
        )


def snapshot(
    control: tuple[int, int],
    treatment: tuple[int, int],
    *,
    hours: float = 24 * 8,
    treatment_errors: float = 10,
    **settings: Any,
) -> dict[str, Any]:
    """Control and treatment with (labels, correct) each and 10 errors per 10,000 requests."""

    def counts(labels: int, correct: int) -> dict[str, Any]:
        cells = [("ok", "ok", correct), ("ok", "fraud", labels - correct)]
        return {
            "requests": 10_000,
            "feedback": [{"actual": a, "predicted": p, "count": n} for a, p, n in cells],
        }

    return {
        "model": "fraud-detection",
        "stack": "prod",
        "taken_at": "2026-11-24T12:00:00Z",
        "started": f"{np.datetime64('2026-11-24T12:00:00') - np.timedelta64(int(hours * 3600), 's')}Z",
        "control": "v1.0.0",
        "treatment": "v1.1.0",
        "positive_class": "fraud",
        "experiment": {"effect": 0.02, **settings},
        "looks": [
            {"at": "2026-11-24T12:00:00Z", "control": counts(*control), "treatment": counts(*treatment)}
        ],
        "counts": {
            "model": "fraud-detection",
            "stack": "prod",
            "taken_at": "2026-11-24T12:00:00Z",
            "baseline": judged_arm("v1.0.0", 50, 10_000, 10),
            "canary": judged_arm("v1.1.0", 50, 10_000, treatment_errors),
            "analysis": {},
        },
    }


def test_a_clearly_better_treatment_wins() -> None:
    decision = experiment.analyze(snapshot((10_000, 9_000), (10_000, 9_400)))
    assert (decision.outcome, decision.winner, decision.loser) == ("winner", "v1.1.0", "v1.0.0")
    assert decision.primary.lower > 0
    assert decision.coverage == {"v1.0.0": 1.0, "v1.1.0": 1.0}
    assert [g.worse for g in decision.guardrails] == [False, False]


def test_a_better_control_wins_too() -> None:
    decision = experiment.analyze(snapshot((10_000, 9_400), (10_000, 9_000)))
    assert (decision.outcome, decision.winner) == ("winner", "v1.0.0")


def test_equal_arms_with_enough_labels_show_no_meaningful_difference() -> None:
    decision = experiment.analyze(snapshot((40_000, 36_000), (40_000, 36_040)))
    assert decision.outcome == "equivalent"
    assert -0.02 < decision.primary.lower < decision.primary.upper < 0.02


def test_too_few_labels_continue_and_say_how_many_more() -> None:
    decision = experiment.analyze(snapshot((1_000, 900), (1_000, 915)))
    assert decision.outcome == "continue"
    assert decision.needs is not None
    assert decision.needs["labels"] is not None
    assert 2_000 < decision.needs["labels"] < 40_000
    assert decision.needs["seconds"] is not None


def test_no_decision_before_min_duration() -> None:
    decision = experiment.analyze(snapshot((10_000, 9_000), (10_000, 9_400), hours=24, min_duration="7d"))
    assert decision.outcome == "continue"
    assert "min_duration 7d" in decision.reasons[0]
    # Decided on the labels: what it needs is the rest of its min_duration, 6 days.
    assert decision.needs == {"labels": 0.0, "seconds": 6 * 86400}


def test_a_winner_worse_on_a_guardrail_is_no_winner() -> None:
    decision = experiment.analyze(snapshot((10_000, 9_000), (10_000, 9_400), treatment_errors=60))
    assert decision.outcome == "continue"
    assert "worse on errors" in decision.reasons[0]


def test_a_labelled_guardrail_blocks_a_winner_worse_on_it() -> None:
    data = snapshot((10_000, 8_800), (10_000, 9_600), metric="accuracy", guardrails=["recall"])
    look = data["looks"][0]
    # Treatment: better accuracy, but it misses most of the fraud the control catches.
    look["control"]["feedback"] += [{"actual": "fraud", "predicted": "fraud", "count": 900}]
    look["treatment"]["feedback"] += [
        {"actual": "fraud", "predicted": "fraud", "count": 300},
        {"actual": "fraud", "predicted": "ok", "count": 600},
    ]
    decision = experiment.analyze(data)
    assert decision.outcome == "continue"
    assert decision.guardrails[0].metric == "recall"
    assert decision.guardrails[0].worse


def test_analysis_is_a_pure_function_of_the_snapshot() -> None:
    data = snapshot((10_000, 9_000), (10_000, 9_400))
    first, second = experiment.analyze(copy.deepcopy(data)), experiment.analyze(data)
    assert first.to_dict() == second.to_dict()
    assert len(first.snapshot_sha256) == 64


def test_a_look_without_a_time_zone_is_refused() -> None:
    data = snapshot((10, 9), (10, 9))
    data["looks"][0]["at"] = "2026-11-24T12:00:00"
    with pytest.raises(UserError, match="no time zone"):
        experiment.analyze(data, "s.json")


def test_bad_snapshots_are_one_line_per_problem() -> None:
    data = snapshot((10, 9), (10, 9), metric="value")
    data["looks"][0]["at"] = "2026-11-24T12:00:00"
    with pytest.raises((UserError, UserErrors)) as caught:
        experiment.analyze(data, "s.json")
    text = str(caught.value)
    assert "value_sd" in text
    assert "s.json" in text
    assert "\n" not in str(getattr(caught.value, "errors", [""])[0])


def test_plan_for_two_points_at_ninety_percent() -> None:
    plan = experiment.plan("accuracy", 0.9, 0.02)
    # A fixed-sample two-sided test needs about 6,400; always-valid intervals cost about twice that.
    assert 10_000 < plan.labels < 15_000  # type: ignore[operator]
    assert plan.per_arm["control"] + plan.per_arm["treatment"] >= plan.labels  # type: ignore[operator]
    assert experiment.plan("accuracy", 0.9, 0.02, labels_per_second=1.0).seconds == plan.labels
    assert experiment.plan("accuracy", 0.9, 0.02, share_treatment=0.2).labels > plan.labels  # type: ignore[operator]
    with pytest.raises(UserError, match="--sd"):
        experiment.plan("value", 10, 1)


def test_equal_arms_rarely_produce_a_false_winner() -> None:
    """Equal accuracy (90%), a look every 100 labels up to twice the plan: false winners <= alpha
    (bench/ab runs the full tables)."""
    cell = bench.Cell(0.90, 0.90, 0.5)
    runs = bench.simulate(cell, 300, seed=15, horizon=bench.horizon(cell))
    false_winners = sum(r.decision in ("treatment", "control") for r in runs) / len(runs)
    assert false_winners <= bench.ALPHA
    # The naive repeated z-test on the same kind of traffic finds a "winner" far more often.
    naive = bench.simulate(cell, 100, seed=15, horizon=bench.horizon(cell), naive=True)
    assert sum(r.decision != "none" for r in naive) / len(naive) > 4 * bench.ALPHA


def test_a_two_point_difference_is_declared_within_the_plan() -> None:
    """90% vs 92%: the better arm declared within the labelled requests 'ab plan' predicts in
    >= 80% of runs, and never the worse one."""
    cell = bench.Cell(0.90, 0.92, 0.5)
    planned = experiment.plan("accuracy", 0.90, 0.02).labels
    assert planned == cell.planned
    runs = bench.simulate(cell, 300, seed=16, horizon=bench.horizon(cell))
    within = sum(r.decision == "treatment" and r.labels <= planned for r in runs) / len(runs)
    assert within >= 0.8
    assert not any(r.decision == "control" for r in runs)
    assert math.isfinite(within)
