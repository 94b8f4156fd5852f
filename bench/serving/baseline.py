"""The seed's model server, as the baseline: Flask, one `predict` and one `predict_proba` per request.

Run under gunicorn with 2 sync workers by the benchmark; it loads the same skops artifact
(`BENCH_MODEL`, trusting `BENCH_TRUSTED`) as the server it is compared with.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

import numpy as np
import skops.io
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

model: Any = skops.io.load(os.environ["BENCH_MODEL"], trusted=json.loads(os.environ["BENCH_TRUSTED"]))
app = Flask(__name__)


@app.route("/predict", methods=["POST"])
def predict() -> ResponseReturnValue:
    data = request.get_json()
    features = np.array(data["features"]).reshape(1, -1)
    prediction = model.predict(features)
    probability = model.predict_proba(features)
    return jsonify(
        {
            "prediction": int(prediction[0]),
            "probability": probability[0].tolist(),
            "timestamp": datetime.now().isoformat(),
        }
    )
