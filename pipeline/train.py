"""Stage `train@<model>`: fit the classifier that params.yaml chooses, save it with skops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline.common import Paths, load_dataset, model_from_argv, model_params, save_skops


def _logistic_regression(**options: Any) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(**options))


# Each algorithm takes the remaining train params as its keyword arguments.
ALGORITHMS: dict[str, Callable[..., Any]] = {
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "logistic_regression": _logistic_regression,
}


def build(params: dict[str, Any]) -> Any:
    options = dict(params)
    algorithm = options.pop("algorithm")
    if algorithm not in ALGORITHMS:
        raise SystemExit(
            f"params.yaml: train.algorithm {algorithm!r} is unknown; use one of {sorted(ALGORITHMS)}"
        )
    return ALGORITHMS[algorithm](**options)


def train(model: str) -> Any:
    data = load_dataset(Paths(model).data)
    classifier = build(model_params(model)["train"])
    # Histogram and BLAS sums are split across threads in an order that depends on how many
    # there are; one thread makes the fitted model the same bytes on every machine.
    with threadpool_limits(limits=1):
        return classifier.fit(data.X_train, data.y_train)


if __name__ == "__main__":
    name = model_from_argv()
    save_skops(train(name), Paths(name).artifact)
