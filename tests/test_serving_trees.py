"""Bitvector tables give the probabilities scikit-learn and treelite's GTIL give, missing values
included, and decline the models they cannot express."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import treelite.gtil
import treelite.sklearn
from sklearn.datasets import make_classification
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)

from serving.trees import tree_tables

TOLERANCE = 1e-12


def data(seed: int, classes: int = 2) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    rows, labels = make_classification(
        n_samples=1_500, n_features=8, n_informative=5, n_classes=classes, random_state=seed
    )
    return rows, labels


def with_missing(rows: npt.NDArray[np.float64], seed: int) -> npt.NDArray[np.float64]:
    rows = rows.copy()
    rows[np.random.default_rng(seed).random(rows.shape) < 0.15] = np.nan
    return rows


@pytest.mark.parametrize("leaves", [3, 15, 31, 63])
def test_tables_equal_sklearn_and_gtil_with_missing_values(leaves: int) -> None:
    rows, labels = data(seed=leaves)
    train = with_missing(rows, seed=1)  # so splits learn where missing values go
    estimator = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=leaves, random_state=0)
    estimator.fit(train, labels)
    model = treelite.sklearn.import_model(estimator)
    tables = tree_tables(model)
    assert tables is not None
    for batch in (rows[:1], rows[:7], with_missing(rows[:300], seed=2), rows[:, :] * 1e6):
        got = tables.predict_proba(batch)
        np.testing.assert_allclose(got, estimator.predict_proba(batch), rtol=0, atol=TOLERANCE)
        gtil = treelite.gtil.predict(model, batch).reshape(len(batch))
        np.testing.assert_allclose(got[:, 1], gtil, rtol=0, atol=TOLERANCE)


def test_tables_equal_sklearn_for_gradient_boosting() -> None:
    rows, labels = data(seed=5)
    estimator = GradientBoostingClassifier(n_estimators=30, max_depth=4, random_state=0).fit(rows, labels)
    tables = tree_tables(treelite.sklearn.import_model(estimator))
    assert tables is not None
    np.testing.assert_allclose(
        tables.predict_proba(rows[:200]), estimator.predict_proba(rows[:200]), rtol=0, atol=TOLERANCE
    )


def test_rows_of_another_width_are_refused() -> None:
    rows, labels = data(seed=6)
    estimator = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(rows, labels)
    tables = tree_tables(treelite.sklearn.import_model(estimator))
    assert tables is not None
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        tables.predict_proba(rows[:, :7])


@pytest.mark.parametrize(
    ("estimator", "classes"),
    [
        (HistGradientBoostingClassifier(max_iter=5, random_state=0), 3),  # softmax over classes
        (RandomForestClassifier(n_estimators=5, random_state=0), 2),  # leaf vectors, averaged
    ],
)
def test_models_the_tables_cannot_express_are_left_to_gtil(estimator: object, classes: int) -> None:
    rows, labels = data(seed=7, classes=classes)
    estimator.fit(rows, labels)  # type: ignore[attr-defined]
    assert tree_tables(treelite.sklearn.import_model(estimator)) is None
