"""Drift on small and degenerate data (case 02): exact tests where counts are small, false alarms
at most alpha at every window size, a server gauge and alert that account for the window's size,
references without spread, missing values, and `modelctl drift`'s input errors.

Sources of the scenarios: scipy/scipy#9786 (asymptotic p-values on small samples),
evidentlyai/evidently#509 (drift reported on a handful of current rows).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infra.alert_rules import DRIFT_P_VALUE
from modelctl.cli import main
from modelctl.core.drift import DriftWindow, Profile, detect_drift, fit_profile
from tests.factories import FEATURES, model_doc, write_repo

ALPHA = 0.05
NAMES = ["amount", "hour", "risk", "distance", "is_foreign", "category"]
CATEGORICAL = ["is_foreign", "category"]


def reference_rows(rows: int, seed: int) -> np.ndarray[Any, Any]:
    """Continuous, integer and categorical features; one category at 5%, one at 1%."""
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.lognormal(3, 1, rows),
            rng.integers(0, 24, rows).astype(np.float64),
            rng.beta(2, 5, rows),
            rng.poisson(3, rows).astype(np.float64),
            (rng.uniform(size=rows) < 0.05).astype(np.float64),
            rng.choice(6, size=rows, p=[0.4, 0.3, 0.15, 0.09, 0.05, 0.01]).astype(np.float64),
        ]
    )


REFERENCE = reference_rows(4000, seed=0)
PROFILE = fit_profile(REFERENCE, NAMES, categorical=CATEGORICAL)
SIZES = (1, 2, 3, 5, 10, 30, 100, 300, 1000)


def undrifted(rng: np.random.Generator, rows: int) -> np.ndarray[Any, Any]:
    """A window drawn from the reference itself."""
    return REFERENCE[rng.integers(0, REFERENCE.shape[0], rows)]


def false_alarm_rate(size: int, repetitions: int) -> float:
    rng = np.random.default_rng(size)
    flagged = sum(
        detect_drift(PROFILE, undrifted(rng, size), alpha=ALPHA).drift_detected for _ in range(repetitions)
    )
    return flagged / repetitions


@pytest.mark.parametrize("size", SIZES)
def test_family_wise_false_alarms_stay_at_most_alpha_at_every_window_size(size: int) -> None:
    """Windows drawn from the reference are flagged at most alpha of the time (Holm, all features).

    300 windows per size bound the rate to within 3 standard errors (3.8 points) of its value; the
    chi-squared approximation at one row was flagged 18% of the time (case 02).
    """
    repetitions = 300
    rate = false_alarm_rate(size, repetitions)

    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / repetitions)


def drift_repo(tmp_path: Path) -> Path:
    """A repository whose v1.0.0 registers a profile of the test signature's four features, the
    last a category at 5%."""
    root = tmp_path / "repo"
    profile_path = root / "artifacts" / "fraud-detection" / "profile.npz"
    profile_path.parent.mkdir(parents=True)
    reference = REFERENCE[:, [0, 1, 2, 4]]
    fit_profile(reference, FEATURES, categorical=[FEATURES[3]]).save(profile_path)
    doc = model_doc()
    doc["versions"]["v1.0.0"]["profile"]["sha256"] = hashlib.sha256(profile_path.read_bytes()).hexdigest()
    return write_repo(root, models={"fraud-detection": doc}, git=False)


def write_csv(path: Path, rows: np.ndarray[Any, Any], header: bool = True) -> Path:
    lines = [",".join(FEATURES)] if header else []
    lines += [",".join(f"{v:.6f}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n" if lines else "")
    return path


def run(root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["-C", str(root), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_ordinary_row_is_no_drift_and_exit_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 02: one row at the reference medians with the 5% category is not drift."""
    root = drift_repo(tmp_path)
    row = np.median(REFERENCE[:, [0, 1, 2, 4]], axis=0)
    row[3] = 1.0  # the 5% category
    current = write_csv(tmp_path / "one_row.csv", row[None, :])

    code, out, err = run(root, capsys, "drift", "fraud-detection", "v1.0.0", "--current", str(current))

    assert (code, err) == (0, "")
    assert "no drift" in out.splitlines()[0]
    [row] = [line for line in out.splitlines() if line.startswith("distance_km ")]
    assert row.split()[1:2] == ["fisher"]


def test_small_category_counts_use_the_exact_test_and_large_ones_chi_squared() -> None:
    one_foreign = np.median(REFERENCE, axis=0)
    one_foreign[4] = 1.0
    small = {f.name: f for f in detect_drift(PROFILE, one_foreign[None, :]).features}
    large = {f.name: f for f in detect_drift(PROFILE, REFERENCE[:2000]).features}

    assert small["is_foreign"].test == "fisher"
    # Exact: one foreign row when 5% are is about as likely as 1 in 20 (the chi-squared
    # approximation said 1.8e-5), doubled for the pool of unseen categories.
    assert 0.05 < small["is_foreign"].p_value <= 0.2
    assert small["category"].test == "fisher"
    assert (large["is_foreign"].test, large["category"].test) == ("chi2", "chi2")


def test_a_category_that_moved_drifts_at_small_counts_too() -> None:
    rng = np.random.default_rng(5)
    window = undrifted(rng, 30)
    window[:, 4] = 1.0  # every row foreign, where 5% were

    report = detect_drift(PROFILE, window)

    assert report.drifted == ["is_foreign"]


# ---------------------------------------------------------------- the server's gauge and alert


@pytest.mark.parametrize("size", SIZES)
def test_the_gauge_stays_above_the_alert_threshold_on_undrifted_traffic(size: int) -> None:
    """No alert on undrifted traffic at any traffic level: a pod's window of 1 row up."""
    rng = np.random.default_rng(100 + size)
    alerting = 0
    for _ in range(100):
        window = DriftWindow(PROFILE, 10_000)
        window.add(undrifted(rng, size))
        alerting += min(window.p_values().values()) < DRIFT_P_VALUE
    assert alerting == 0


@pytest.mark.parametrize(("size", "shift"), [(50, 1.0), (300, 0.3), (3000, 0.1)])
def test_the_gauge_crosses_the_alert_threshold_when_a_feature_drifted(size: int, shift: float) -> None:
    rng = np.random.default_rng(size)
    rows = undrifted(rng, size)
    rows[:, 2] += shift * float(np.std(REFERENCE[:, 2]))
    window = DriftWindow(PROFILE, 10_000)
    window.add(rows)

    p_values = window.p_values()

    assert p_values["risk"] < DRIFT_P_VALUE
    assert min(v for name, v in p_values.items() if name != "risk") >= DRIFT_P_VALUE


# ---------------------------------------------------------------- degenerate scales, missing values


def constant_profile(value: float, spread: float = 0.0) -> Profile:
    rng = np.random.default_rng(3)
    column = value + spread * rng.normal(size=2000)
    return fit_profile(np.column_stack([column, rng.normal(size=2000)]), ["flat", "x"])


@pytest.mark.parametrize(("value", "spread"), [(1.0, 0.0), (250.0, 0.0), (1.0, 1e-12), (-3e6, 1e-7)])
def test_round_off_on_a_reference_without_spread_is_not_drift(value: float, spread: float) -> None:
    rng = np.random.default_rng(4)
    profile = constant_profile(value, spread)
    # The same values after a float32 round trip and some arithmetic noise.
    flat = (np.float32(value) + np.zeros(500, dtype=np.float32)).astype(np.float64) * (1 + 1e-9)
    current = np.column_stack([flat, rng.normal(size=500)])

    report = detect_drift(profile, current)

    flat_result = report.features[0]
    assert not report.drift_detected
    assert flat_result.effect_size < 0.01


def test_a_reference_without_spread_still_sees_a_real_move() -> None:
    rng = np.random.default_rng(6)
    current = np.column_stack([np.full(50, 2.0), rng.normal(size=50)])

    report = detect_drift(constant_profile(1.0), current)

    flat = report.features[0]
    assert (flat.test, flat.statistic, flat.drifted) == ("range", 1.0, True)
    assert flat.effect_size == pytest.approx(math.pi)


def test_missing_values_are_a_missing_rate_change_not_a_ks_result() -> None:
    rng = np.random.default_rng(8)
    current = undrifted(rng, 400)
    current[:200, 0] = np.nan

    report = detect_drift(PROFILE, current)

    amount = report.features[0]
    assert report.drifted == ["amount"]
    assert (amount.test, amount.statistic, amount.missing_current) == ("missing", 0.5, 0.5)


def test_a_feature_gone_missing_is_a_missing_rate_change() -> None:
    rng = np.random.default_rng(9)
    current = undrifted(rng, 40)
    current[:, 1] = np.nan

    hour = detect_drift(PROFILE, current).features[1]

    assert (hour.test, hour.statistic, hour.drifted) == ("missing", 1.0, True)


# ---------------------------------------------------------------- modelctl drift: input errors


def drift_found_code(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> int:
    rows = REFERENCE[:500, [0, 1, 2, 4]].copy()
    rows[:, 0] *= 3
    code, _, _ = run(
        root,
        capsys,
        "drift",
        "fraud-detection",
        "v1.0.0",
        "--current",
        str(write_csv(tmp_path / "d.csv", rows)),
    )
    return code


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no header", "not column names: there is no header row; write the feature names as the first line"),
        ("empty file", "unreadable CSV (Empty CSV file); write a header row and numbers"),
        ("header only", "holds no rows; pass a file with at least one row of data"),
        ("wrong columns", "missing columns: amount, hour, merchant_risk, distance_km; give every feature of the model's signature a column"),
        ("report folder missing", "does not exist; create it first or pass another --report path"),
    ],
)  # fmt: skip
def test_drift_input_errors_are_one_line_with_an_error_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    root = drift_repo(tmp_path)
    rows = REFERENCE[:20, [0, 1, 2, 4]]
    current = tmp_path / "current.csv"
    extra: list[str] = []
    if case == "no header":
        write_csv(current, rows, header=False)
    elif case == "empty file":
        current.write_text("")
    elif case == "header only":
        write_csv(current, rows[:0])
    elif case == "wrong columns":
        current.write_text("a,b,c\n1,2,3\n")
    else:
        write_csv(current, rows)
        extra = ["--report", str(tmp_path / "missing" / "report.html")]

    code, out, err = run(
        root, capsys, "drift", "fraud-detection", "v1.0.0", "--current", str(current), *extra
    )

    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert err.rstrip().endswith(message)
    assert code not in (0, drift_found_code(root, tmp_path, capsys))
    assert not (tmp_path / "missing").exists()
