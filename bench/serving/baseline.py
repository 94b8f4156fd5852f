"""The seed's model server, as the baseline: Flask, the format's own library called per request.

Run under gunicorn with 2 sync workers by the benchmark; it loads the same artifact
(`BENCH_MODEL`, in `BENCH_FORMAT`; a skops file trusting `BENCH_TRUSTED`) as the server it is
compared with, with the library each format's users serve it with: scikit-learn (`predict` and
`predict_proba`, as the seed did), XGBoost's XGBClassifier (the same two calls), a LightGBM
Booster, and onnxruntime with its defaults (labels and probabilities in one call each).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

Predict = Callable[[Any], tuple[int, list[float]]]


def _sklearn(model: Any) -> Predict:
    return lambda rows: (int(model.predict(rows)[0]), model.predict_proba(rows)[0].tolist())


def _load(path: str, fmt: str) -> Predict:
    if fmt == "skops":
        import skops.io

        return _sklearn(skops.io.load(path, trusted=json.loads(os.environ["BENCH_TRUSTED"])))
    if fmt == "xgboost":
        import xgboost

        classifier = xgboost.XGBClassifier()
        classifier.load_model(path)
        return _sklearn(classifier)
    if fmt == "lightgbm":
        import lightgbm

        booster = lightgbm.Booster(model_file=path)

        def lightgbm_predict(rows: Any) -> tuple[int, list[float]]:
            positive = float(booster.predict(rows)[0])
            return int(positive > 0.5), [1 - positive, positive]

        return lightgbm_predict
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def onnx_predict(rows: Any) -> tuple[int, list[float]]:
        label, probabilities = session.run(None, {"input": rows.astype(np.float32)})
        return int(label[0]), probabilities[0].tolist()

    return onnx_predict


predict_row = _load(os.environ["BENCH_MODEL"], os.environ.get("BENCH_FORMAT", "skops"))
app = Flask(__name__)


@app.route("/predict", methods=["POST"])
def predict() -> ResponseReturnValue:
    data = request.get_json()
    prediction, probability = predict_row(np.array(data["features"]).reshape(1, -1))
    return jsonify(
        {"prediction": prediction, "probability": probability, "timestamp": datetime.now().isoformat()}
    )
