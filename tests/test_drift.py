"""Drift detection: agreement with scipy, the sketch's error bound, corrections, the profile file,
the streaming window, and the detection targets at reduced scale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from modelctl.core.drift import (
    DriftWindow,
    Profile,
    adjust_pvalues,
    detect_drift,
    fit_profile,
    ks_pvalue,
    ks_statistic,
)

Floats = npt.NDArray[np.float64]
Sampler = Callable[[np.random.Generator, int], Floats]

SAMPLERS: dict[str, Sampler] = {
    "normal": lambda g, n: g.normal(0, 1, n),
    "lognormal": lambda g, n: g.lognormal(0, 1, n),
    "integers": lambda g, n: g.integers(0, 6, n).astype(np.float64),
    "rounded": lambda g, n: np.round(g.normal(0, 1, n), 1),
    "zero_inflated": lambda g, n: np.where(g.random(n) < 0.5, 0.0, g.exponential(1, n)),
}


def column(values: Floats) -> Floats:
    return values.reshape(-1, 1)


def sorted_current(values: Floats) -> Floats:
    return np.sort(values)


# ---------------------------------------------------------------- agreement with scipy


@pytest.mark.parametrize("shape", SAMPLERS)
@pytest.mark.parametrize(("n_ref", "n_cur"), [(1, 7), (60, 45), (800, 1500), (5000, 3000)])
def test_exact_ks_statistic_equals_scipy(shape: str, n_ref: int, n_cur: int) -> None:
    rng = np.random.default_rng(n_ref + n_cur)
    reference = SAMPLERS[shape](rng, n_ref)
    current = SAMPLERS[shape](rng, n_cur) * 1.1 + 0.05
    profile = fit_profile(column(reference), ["x"], exact=True)
    ours = ks_statistic(profile.sketch("x"), sorted_current(current))
    assert ours == pytest.approx(stats.ks_2samp(reference, current).statistic, abs=1e-12)


@pytest.mark.parametrize("shape", SAMPLERS)
def test_report_pvalue_follows_scipy_asymptotic_formula(shape: str) -> None:
    rng = np.random.default_rng(3)
    reference, current = SAMPLERS[shape](rng, 900), SAMPLERS[shape](rng, 1100) + 0.1
    report = detect_drift(fit_profile(column(reference), ["x"], exact=True), column(current))
    expected = stats.ks_2samp(reference, current, method="asymp")
    assert report.features[0].statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert report.features[0].p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("effective", [2500, 20_000, 500_000])
def test_large_sample_pvalue_is_safe_and_close(effective: int) -> None:
    # Above the kstwo range the limit distribution is used: never smaller, within 0.007.
    for d in np.linspace(0.3, 3.0, 12) / np.sqrt(effective):
        limit = ks_pvalue(d, 2 * effective, 2 * effective)
        reference = stats.kstwo.sf(d, effective)
        assert reference - 1e-15 <= limit <= reference + 0.007


def test_chi_squared_for_categories_equals_scipy() -> None:
    rng = np.random.default_rng(5)
    reference = rng.choice(4, 3000, p=[0.4, 0.3, 0.2, 0.1]).astype(np.float64)
    current = rng.choice(5, 2000, p=[0.35, 0.3, 0.2, 0.1, 0.05]).astype(np.float64)
    profile = fit_profile(column(reference), ["c"], categorical=["c"])
    result = detect_drift(profile, column(current)).features[0]
    table = np.array(
        [np.bincount(reference.astype(int), minlength=5), np.bincount(current.astype(int), minlength=5)]
    )
    expected = stats.chi2_contingency(table, correction=False)
    assert result.test == "chi2"
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_wasserstein_effect_is_the_shift_in_reference_stds() -> None:
    rng = np.random.default_rng(6)
    reference, current = rng.normal(10, 2, 50_000), rng.normal(10.4, 2, 50_000)
    report = detect_drift(fit_profile(column(reference), ["x"]), column(current))
    scipy_w = stats.wasserstein_distance(reference, current) / reference.std(ddof=1)
    assert report.features[0].effect_size == pytest.approx(scipy_w, rel=0.03)
    assert report.features[0].effect_size == pytest.approx(0.2, abs=0.02)


# ---------------------------------------------------------------- the sketch


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(sorted(SAMPLERS)),
    n_ref=st.integers(2, 4000),
    n_cur=st.integers(1, 3000),
    points=st.integers(2, 300),
)
def test_sketch_ks_is_within_its_documented_bound(
    seed: int, shape: str, n_ref: int, n_cur: int, points: int
) -> None:
    rng = np.random.default_rng(seed)
    reference = SAMPLERS[shape](rng, n_ref)
    current = SAMPLERS[shape](rng, n_cur) + rng.normal(0, 0.2)
    sketch = fit_profile(column(reference), ["x"], sketch_points=points).sketch("x")
    exact = stats.ks_2samp(reference, current).statistic
    assert sketch.error_bound < 1 / (points - 1) + 1e-12
    assert abs(ks_statistic(sketch, sorted_current(current)) - exact) <= sketch.error_bound + 1e-12


def test_sketch_pvalue_is_never_below_the_exact_one() -> None:
    rng = np.random.default_rng(8)
    for shift in (0.0, 0.02, 0.05):
        reference, current = rng.normal(0, 1, 30_000), rng.normal(shift, 1, 30_000)
        exact = detect_drift(fit_profile(column(reference), ["x"], exact=True), column(current))
        sketch = detect_drift(fit_profile(column(reference), ["x"], sketch_points=257), column(current))
        assert sketch.features[0].p_value >= exact.features[0].p_value


def test_profile_size_does_not_grow_with_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    sizes = []
    for rows in (20_000, 200_000):
        path = tmp_path / f"{rows}.npz"
        fit_profile(rng.normal(size=(rows, 3)), ["a", "b", "c"], sketch_points=1025).save(path)
        sizes.append(path.stat().st_size)
    assert abs(sizes[0] - sizes[1]) < 16  # only the row count in the metadata differs


# ---------------------------------------------------------------- multiple testing


def holm_reference(p: list[float]) -> list[float]:
    k = len(p)
    order = sorted(range(k), key=lambda i: p[i])
    adjusted, running = [0.0] * k, 0.0
    for rank, i in enumerate(order):
        running = max(running, (k - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def bh_reference(p: list[float]) -> list[float]:
    k = len(p)
    order = sorted(range(k), key=lambda i: p[i])
    adjusted, running = [0.0] * k, 1.0
    for rank in range(k - 1, -1, -1):
        i = order[rank]
        running = min(running, k * p[i] / (rank + 1))
        adjusted[i] = min(1.0, running)
    return adjusted


@given(st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_holm_and_bh_match_reference_implementations(p: list[float]) -> None:
    assert np.allclose(adjust_pvalues(p, "holm"), holm_reference(p), rtol=0, atol=1e-12)
    assert np.allclose(adjust_pvalues(p, "bh"), bh_reference(p), rtol=0, atol=1e-12)
    assert np.allclose(adjust_pvalues(p, "bonferroni"), np.minimum(np.array(p) * len(p), 1))


def test_holm_is_the_default_and_bh_is_an_option() -> None:
    rng = np.random.default_rng(10)
    reference = rng.normal(size=(5000, 4))
    current = rng.normal(size=(5000, 4)) + np.array([0.0, 0.0, 0.08, 0.09])
    profile = fit_profile(reference, list("abcd"))
    holm, bh = detect_drift(profile, current), detect_drift(profile, current, correction="bh")
    raw = [f.p_value for f in holm.features]
    assert holm.correction == "holm"
    assert [f.p_adjusted for f in holm.features] == pytest.approx(holm_reference(raw))
    assert [f.p_adjusted for f in bh.features] == pytest.approx(bh_reference(raw))


# ---------------------------------------------------------------- the report


def test_report_contract_fields() -> None:
    rng = np.random.default_rng(11)
    profile = fit_profile(rng.normal(size=(2000, 2)), ["a", "b"], scores=rng.uniform(size=2000))
    result = detect_drift(profile, rng.normal(size=(1000, 2)), scores=rng.uniform(size=1000)).to_dict()
    assert isinstance(result["drift_detected"], bool)
    for feature in [*result["features"], result["prediction"]]:
        assert {"name", "statistic", "p_value", "p_adjusted", "effect_size", "drifted"} <= set(feature)
    assert [f["name"] for f in result["features"]] == ["a", "b"]
    assert result["prediction"]["name"] == "prediction"


def test_effect_floor_ignores_trivial_shifts_in_huge_windows() -> None:
    rng = np.random.default_rng(12)
    reference, current = rng.normal(0, 1, 400_000), rng.normal(0.02, 1, 400_000)
    profile = fit_profile(column(reference), ["x"])
    assert detect_drift(profile, column(current)).drift_detected
    assert not detect_drift(profile, column(current), effect_floor=0.05).drift_detected


def test_prediction_drift_is_detected_from_scores() -> None:
    rng = np.random.default_rng(13)
    features = rng.normal(size=(4000, 2))
    profile = fit_profile(features, ["a", "b"], scores=rng.beta(2, 5, 4000))
    report = detect_drift(profile, rng.normal(size=(4000, 2)), scores=rng.beta(2.6, 5, 4000))
    assert report.prediction is not None
    assert report.prediction.drifted
    assert report.drifted == ["prediction"]


def test_missing_values_are_excluded_but_a_vanished_feature_drifts() -> None:
    rng = np.random.default_rng(14)
    profile = fit_profile(rng.normal(size=(3000, 2)), ["a", "b"])
    current = rng.normal(size=(3000, 2))
    current[::50, 0] = np.nan  # 2% missing where the reference had none: that is drift too
    current[:, 1] = np.nan
    report = detect_drift(profile, current)
    assert report.features[0].missing_current == pytest.approx(0.02, abs=1e-9)
    assert report.features[0].count == 2940
    assert report.features[0].drifted
    assert report.features[1].drifted
    assert report.features[1].missing_current == 1.0


def test_psi_bins_are_estimated_out_of_sample() -> None:
    rng = np.random.default_rng(15)
    profile = fit_profile(column(rng.normal(size=20_000)), ["x"])
    held_out = profile.psi_reference[0]
    # Counted on the half the edges were not fitted on, so not all exactly a tenth.
    assert held_out.sum() == pytest.approx(10_000, rel=0.05)
    assert len(set(held_out.tolist())) > 1
    same = detect_drift(profile, column(rng.normal(size=20_000))).features[0].psi
    shifted = detect_drift(profile, column(rng.normal(0.3, 1, 20_000))).features[0].psi
    assert same < 0.01 < shifted


def test_bad_shapes_are_refused() -> None:
    profile = fit_profile(np.zeros((10, 2)) + np.arange(10)[:, None], ["a", "b"])
    with pytest.raises(ValueError, match="2 features"):
        detect_drift(profile, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="categorical"):
        fit_profile(np.zeros((10, 2)), ["a", "b"], categorical=["c"])


# ---------------------------------------------------------------- the profile file


def test_saving_twice_gives_identical_bytes_and_load_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    data, scores = rng.normal(size=(5000, 3)), rng.uniform(size=5000)
    data[:, 2] = rng.integers(0, 4, 5000)
    first, second = tmp_path / "one.npz", tmp_path / "two.npz"
    fit_profile(data, ["a", "b", "c"], scores=scores, categorical=["c"]).save(first)
    fit_profile(data.copy(), ["a", "b", "c"], scores=scores.copy(), categorical=["c"]).save(second)
    assert first.read_bytes() == second.read_bytes()
    loaded = Profile.load(first)
    assert loaded.feature_names == ("a", "b", "c")
    assert loaded.kinds == ("numeric", "numeric", "categorical")
    assert loaded.has_scores
    assert sorted(np.load(first).files) == sorted(np.load(first).files)  # a plain .npz
    current = rng.normal(size=(800, 3))
    current[:, 2] = rng.integers(0, 5, 800)
    original = fit_profile(data, ["a", "b", "c"], scores=scores, categorical=["c"])
    assert detect_drift(loaded, current).to_dict() == detect_drift(original, current).to_dict()


def test_profile_holds_summary_statistics() -> None:
    data = np.array([[1.0, 5.0], [2.0, np.nan], [3.0, 7.0], [4.0, 6.0]])
    profile = fit_profile(data, ["a", "b"])
    assert profile.count.tolist() == [4, 3]
    assert profile.missing.tolist() == [0, 1]
    assert profile.minimum.tolist() == [1.0, 5.0]
    assert profile.maximum.tolist() == [4.0, 7.0]
    assert profile.mean.tolist() == pytest.approx([2.5, 6.0])
    assert profile.std.tolist() == pytest.approx([np.std([1, 2, 3, 4], ddof=1), 1.0])


# ---------------------------------------------------------------- serving helpers


def test_out_of_range_flags_rows_outside_the_reference() -> None:
    reference = np.array([[0.0, 1.0], [10.0, 2.0], [5.0, 1.0]])
    profile = fit_profile(reference, ["x", "code"], categorical=["code"])
    rows = np.array([[5.0, 1.0], [-1.0, 1.0], [11.0, 2.0], [5.0, 3.0], [np.nan, np.nan]])
    assert profile.out_of_range(rows).tolist() == [False, True, True, True, False]
    assert profile.out_of_range([5.0, 2.0]).tolist() == [False]


def test_drift_window_keeps_the_latest_rows_and_reports_adjusted_p_values() -> None:
    rng = np.random.default_rng(17)
    profile = fit_profile(rng.normal(size=(5000, 2)), ["a", "b"])
    window = DriftWindow(profile, size=100)
    assert all(np.isnan(v) for v in window.p_values().values())
    batches = [rng.normal(size=(n, 2)) for n in (30, 50, 70, 5)]
    for batch in batches:
        window.add(batch)
    latest = np.vstack(batches)[-100:]
    assert len(window) == 100
    assert np.array_equal(window.rows(), latest)
    expected = detect_drift(profile, latest)
    assert window.p_values() == {f.name: f.p_adjusted for f in expected.features}
    window.add(rng.normal(size=(250, 2)))
    assert len(window) == 100
    assert window.report().rows_current == 100


# ---------------------------------------------------------------- targets at reduced scale


def mixed_data(rng: np.random.Generator, rows: int, shifted: tuple[int, ...] = ()) -> Floats:
    shapes: list[tuple[Sampler, float]] = [
        (lambda g, n: g.normal(3, 2, n), 2.0),
        (lambda g, n: g.lognormal(0, 1, n), float(np.sqrt((np.e - 1) * np.e))),
        (lambda g, n: g.exponential(1, n), 1.0),
        (lambda g, n: g.standard_t(3, n), float(np.sqrt(3))),
        (lambda g, n: g.poisson(3, n).astype(np.float64), float(np.sqrt(3))),
    ]
    data = np.empty((rows, 20))
    for j in range(20):
        sample, std = shapes[j % len(shapes)]
        data[:, j] = sample(rng, rows) + (0.1 * std if j in shifted else 0.0)
    return data


def test_shifted_features_are_found_exactly() -> None:
    shifted = (0, 1, 3)
    exact_hits = 0
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        reference, current = mixed_data(rng, 20_000), mixed_data(rng, 20_000, shifted)
        report = detect_drift(fit_profile(reference, [f"f{j}" for j in range(20)]), current)
        exact_hits += report.drifted == [f"f{j}" for j in shifted]
    assert exact_hits >= 18


def test_no_drift_keeps_the_family_wise_error_rate() -> None:
    alarms, p_values = 0, []
    for seed in range(40):
        rng = np.random.default_rng(2000 + seed)
        reference, current = mixed_data(rng, 5000), mixed_data(rng, 5000)
        report = detect_drift(fit_profile(reference, [f"f{j}" for j in range(20)]), current)
        alarms += report.drift_detected
        p_values += [f.p_value for f in report.features]
    assert alarms <= 5  # alpha 0.05 over 40 seeds: about 2 expected
    assert np.mean(np.array(p_values) <= 0.05) <= 0.06  # per-feature p-values are valid
