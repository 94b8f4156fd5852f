"""Stage `train@<model>`: fit the classifier params.yaml chooses, save it in the format its
`artifact` names (modelctl/core/formats)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from threadpoolctl import threadpool_limits

from pipeline.common import Dataset, Paths, load_dataset, model_from_argv, model_params, save_artifact


def _hist_gradient_boosting(**options: Any) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(**options)


def _logistic_regression(**options: Any) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(**options))


def _xgboost(**options: Any) -> Any:
    import xgboost

    return xgboost.XGBClassifier(**options)


def _name_xgboost_features(model: Any, names: list[str]) -> None:
    model.get_booster().feature_names = names


def _lightgbm(**options: Any) -> Any:
    import lightgbm

    return lightgbm.LGBMClassifier(**options)


@dataclass(frozen=True)
class Algorithm:
    """An estimator, and what makes its fit the same bytes on every machine.

    `pinned` overrides params.yaml: the library's own determinism settings, one thread.
    The feature names go into the model where the library keeps them (at fit, `fit_names`,
    or afterwards, `name_features`), so the server checks them against the signature.
    """

    make: Callable[..., Any]
    pinned: Mapping[str, Any] = field(default_factory=dict)
    fit_names: str = ""
    name_features: Callable[[Any, list[str]], None] | None = None


# Each algorithm takes the remaining train params as its keyword arguments.
ALGORITHMS: dict[str, Algorithm] = {
    "hist_gradient_boosting": Algorithm(_hist_gradient_boosting),
    "logistic_regression": Algorithm(_logistic_regression),
    # XGBoost's docs ("Reproducibility"): the same data, params and seed give the same model on
    # CPU; `hist` with one thread fixes the order of the gradient sums.
    "xgboost": Algorithm(
        _xgboost,
        pinned={"tree_method": "hist", "n_jobs": 1},
        name_features=_name_xgboost_features,
    ),
    # LightGBM's docs ("deterministic"): with force_row_wise and a fixed seed, the same data
    # and params give the same model; one thread, and no log lines on the stage's output.
    "lightgbm": Algorithm(
        _lightgbm,
        pinned={"deterministic": True, "force_row_wise": True, "n_jobs": 1, "verbose": -1},
        fit_names="feature_name",
    ),
}


def build(params: dict[str, Any]) -> tuple[Algorithm, Any]:
    options = dict(params)
    name = options.pop("algorithm")
    if name not in ALGORITHMS:
        raise SystemExit(f"params.yaml: train.algorithm {name!r} is unknown; use one of {sorted(ALGORITHMS)}")
    algorithm = ALGORITHMS[name]
    return algorithm, algorithm.make(**{**options, **algorithm.pinned})


def train(model: str) -> Any:
    data: Dataset = load_dataset(Paths(model).data)
    algorithm, classifier = build(model_params(model)["train"])
    names = {algorithm.fit_names: data.features} if algorithm.fit_names else {}
    # Histogram and BLAS sums are split across threads in an order that depends on how many
    # there are; one thread makes the fitted model the same bytes on every machine.
    with threadpool_limits(limits=1):
        classifier.fit(data.X_train, data.y_train, **names)
    if algorithm.name_features:
        algorithm.name_features(classifier, data.features)
    return classifier


if __name__ == "__main__":
    name = model_from_argv()
    save_artifact(train(name), Paths(name).artifact)
