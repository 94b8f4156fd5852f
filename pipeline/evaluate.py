"""Stage `evaluate@<model>`: test-set metrics (DVC metrics) and ROC / PR curves (DVC plots)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from pipeline.common import Paths, load_artifact, load_dataset, model_from_argv, write_json

DIGITS = 6


def metrics(
    y: npt.NDArray[np.int64], predicted: npt.NDArray[Any], scores: npt.NDArray[np.float64]
) -> dict[str, float]:
    values = {
        "accuracy": accuracy_score(y, predicted),
        "precision": precision_score(y, predicted, zero_division=0),
        "recall": recall_score(y, predicted),
        "f1": f1_score(y, predicted),
        "auc_roc": roc_auc_score(y, scores),
        "average_precision": average_precision_score(y, scores),
    }
    return {name: round(float(value), DIGITS) for name, value in values.items()}


def curves(y: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> dict[str, list[dict[str, float]]]:
    fpr, tpr, _ = roc_curve(y, scores)
    precision, recall, _ = precision_recall_curve(y, scores, drop_intermediate=True)
    return {
        "roc": [
            {"fpr": round(float(x), DIGITS), "tpr": round(float(t), DIGITS)}
            for x, t in zip(fpr, tpr, strict=True)
        ],
        "pr": [
            {"recall": round(float(r), DIGITS), "precision": round(float(p), DIGITS)}
            for r, p in zip(recall, precision, strict=True)
        ],
    }


def evaluate(model: str) -> None:
    paths = Paths(model)
    data = load_dataset(paths.data)
    probabilities = load_artifact(paths.artifact).predict_proba(data.X_test)
    # The predicted class is the most probable one, as scikit-learn's predict and the server say.
    predicted = probabilities.argmax(axis=1)
    write_json(paths.metrics, metrics(data.y_test, predicted, probabilities[:, 1]))
    for name, points in curves(data.y_test, probabilities[:, 1]).items():
        write_json(paths.plots / f"{name}.json", {name: points})


if __name__ == "__main__":
    evaluate(model_from_argv())
