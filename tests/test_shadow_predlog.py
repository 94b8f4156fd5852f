"""The prediction log: sampled by request id (the same requests in every version), one JSON line per
row, written off the hot path, and per-class prediction counters beside it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from modelctl.core.contract import PREDICTED_CLASS, PREDICTION_LOG_KEYS
from modelctl.core.errors import UserError
from serving.app import create_app
from serving.options import Settings
from serving.predlog import sampled
from serving.server import build
from tests.test_serving_helpers import Version, as_json_row, reference_rows, served

__all__ = ["served"]
JSON = {"content-type": "application/json"}
ROWS = reference_rows(30, seed=11)


def test_sampling_is_a_function_of_the_request_id_only() -> None:
    ids = [f"req-{n}" for n in range(20_000)]
    kept = [i for i in ids if sampled(i, 0.1)]
    assert kept == [i for i in ids if sampled(i, 0.1)]
    assert 0.09 < len(kept) / len(ids) < 0.11  # 10% ± 5 standard deviations
    # A smaller sample is inside a larger one: lowering the rate never adds requests.
    assert {i for i in ids if sampled(i, 0.05)} <= set(kept)
    assert all(sampled(i, 1.0) for i in ids[:10])
    assert not any(sampled(i, 0.0) for i in ids[:10])


def test_the_log_holds_the_sampled_requests_rows_as_answered(served: Version, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "predictions.jsonl"
    settings = Settings(drift_interval_s=3600, prediction_log=str(path), prediction_log_sample=0.5)
    answers = {}
    with TestClient(create_app(build(served.spec, settings))) as client:
        for n in range(60):
            request_id = f"user-{n}"
            body = {"instances": [as_json_row(r) for r in ROWS[n % 3 : n % 3 + 2]]}
            response = client.post(
                "/predict", content=orjson.dumps(body), headers={**JSON, "x-request-id": request_id}
            )
            answers[request_id] = response.json()
    # The lifespan's end wrote what was left.
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert {tuple(line) for line in lines} == {PREDICTION_LOG_KEYS}
    logged_ids = {line["request_id"] for line in lines}
    assert logged_ids == {i for i in answers if sampled(i, 0.5)}
    for line in lines:
        answer = answers[line["request_id"]]
        assert line["class"] == answer["predictions"][line["row"]]
        assert line["score"] == answer["probabilities"][line["row"]][1]  # fraud, the positive class
        assert (line["model"], line["version"], line["time"]) == (
            answer["model"],
            answer["version"],
            answer["timestamp"],
        )
    assert len(lines) == 2 * len(logged_ids)


def test_predicted_classes_are_counted_per_class(served: Version) -> None:
    with TestClient(create_app(build(served.spec, Settings(drift_interval_s=3600)))) as client:
        before = client.get("/metrics").text
        body = {"instances": [as_json_row(r) for r in ROWS]}
        predictions = client.post("/predict", content=orjson.dumps(body), headers=JSON).json()["predictions"]
        after = client.get("/metrics").text

    def counts(text: str) -> dict[str, float]:
        return {
            s.labels["class"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == PREDICTED_CLASS.name
        }

    assert counts(before) == {"legit": 0.0, "fraud": 0.0}  # exported from the start
    assert counts(after) == {c: float(predictions.count(c)) for c in ("legit", "fraud")}


def test_an_unwritable_log_stops_the_server_at_start(served: Version, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = Settings(prediction_log=str(tmp_path / "file" / "predictions.jsonl"))
    with pytest.raises(UserError) as error:
        build(served.spec, settings)
    assert "cannot append to the prediction log" in str(error.value)
    assert "\n" not in str(error.value)
