"""Every request form clients send: named features, MLflow's scoring protocol, KServe v1, the Open
Inference Protocol through Triton's own HTTP client; out-of-range values flagged or refused."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.options import PARITY_TOLERANCE, Settings
from serving.server import build
from tests.test_serving_helpers import (
    SIGNATURE,
    ServerProcess,
    Version,
    as_json_row,
    reference_rows,
    running_server,
    served,
)

__all__ = ["running_server", "served"]
MODEL = "fraud-detection"
ROWS = reference_rows(6, seed=5)
NAMES = SIGNATURE.names


@pytest.fixture
def client(served: Version) -> Iterator[TestClient]:
    server = build(served.spec, Settings(drift_interval_s=3600))
    with TestClient(create_app(server), raise_server_exceptions=False) as test_client:
        yield test_client


def named(row: np.ndarray[Any, Any], reverse: bool = False) -> dict[str, Any]:
    pairs = list(zip(NAMES, as_json_row(row), strict=True))
    return dict(reversed(pairs) if reverse else pairs)


def expected(served: Version, rows: np.ndarray[Any, Any]) -> tuple[list[str], np.ndarray[Any, Any]]:
    return [["legit", "fraud"][i] for i in served.estimator.predict(rows)], served.estimator.predict_proba(
        rows
    )


def assert_batch(body: dict[str, Any], served: Version, rows: np.ndarray[Any, Any]) -> None:
    classes, probabilities = expected(served, rows)
    assert body["predictions"] == classes
    np.testing.assert_allclose(body["probabilities"], probabilities, rtol=0, atol=PARITY_TOLERANCE)


def test_named_features_in_any_order(client: TestClient, served: Version) -> None:
    one = client.post("/predict", json={"features": named(ROWS[0], reverse=True)}).json()
    assert one["prediction"] == expected(served, ROWS[:1])[0][0]
    batch = client.post(
        "/predict", json={"instances": [named(r, reverse=i % 2 == 0) for i, r in enumerate(ROWS)]}
    )
    assert_batch(batch.json(), served, ROWS)


def test_missing_and_unknown_names_are_a_422_naming_them(client: TestClient) -> None:
    row = named(ROWS[0])
    del row["hour"]
    row["colour"] = 3
    response = client.post("/predict", json={"features": row})
    assert response.status_code == 422
    assert 'missing ["hour"] and unknown ["colour"]' in response.json()["error"]


MLFLOW_BODIES: dict[str, Callable[[], dict[str, Any]]] = {
    "dataframe_split": lambda: {
        "dataframe_split": {"columns": NAMES[::-1], "data": [as_json_row(r)[::-1] for r in ROWS]}
    },
    "dataframe_records": lambda: {"dataframe_records": [named(r, reverse=True) for r in ROWS]},
    "inputs as rows": lambda: {"inputs": [as_json_row(r) for r in ROWS]},
    "inputs as columns": lambda: {
        "inputs": {name: [as_json_row(r)[j] for r in ROWS] for j, name in reversed(list(enumerate(NAMES)))}
    },
}


@pytest.mark.parametrize("form", MLFLOW_BODIES)
def test_mlflow_invocations(client: TestClient, served: Version, form: str) -> None:
    response = client.post("/invocations", json=MLFLOW_BODIES[form]())
    assert response.status_code == 200, response.text
    assert_batch(response.json(), served, ROWS)


def test_mlflow_split_with_unknown_columns_names_them(client: TestClient) -> None:
    body = {"dataframe_split": {"columns": [*NAMES[:3], "colour"], "data": [as_json_row(ROWS[0])]}}
    response = client.post("/invocations", json=body)
    assert response.status_code == 422
    assert 'missing ["is_foreign"] and unknown ["colour"]' in response.json()["error"]


def test_kserve_v1_predict(client: TestClient, served: Version) -> None:
    body = {"instances": [named(ROWS[0]), as_json_row(ROWS[1]), *[named(r) for r in ROWS[2:]]]}
    response = client.post(f"/v1/models/{MODEL}:predict", json=body)
    assert response.status_code == 200
    assert_batch(response.json(), served, ROWS)
    assert client.get(f"/v1/models/{MODEL}").json() == {"name": MODEL, "ready": True}
    assert client.post("/v1/models/churn:predict", json=body).status_code == 404


def test_bool_features_take_zero_and_one_as_numeric_clients_send_them(
    client: TestClient, served: Version
) -> None:
    rows = ROWS.tolist()  # every value a float, as numpy's tolist() and X_test.npy give them
    response = client.post("/predict", json={"instances": rows})
    assert response.status_code == 200
    assert_batch(response.json(), served, ROWS)
    assert client.post("/predict", json={"features": [*rows[0][:3], 0.5]}).status_code == 422


def test_out_of_range_values_are_predicted_flagged_and_counted(client: TestClient, served: Version) -> None:
    above = [60_000.0, 3, 1.5, True]  # amount and merchant_risk above the signature's max
    response = client.post("/predict", json={"instances": [as_json_row(ROWS[0]), above]})
    assert response.status_code == 200
    body = response.json()
    assert body["out_of_range"] == [[], ["amount", "merchant_risk"]]
    np.testing.assert_allclose(
        body["probabilities"][1], served.estimator.predict_proba([above])[0], atol=1e-9
    )
    one = client.post("/predict", json={"features": above}).json()
    assert one["out_of_range"] == ["amount", "merchant_risk"]
    assert "out_of_range" not in client.post("/predict", json={"features": as_json_row(ROWS[0])}).json()
    metrics = client.get("/metrics").text
    assert (
        f'model_out_of_distribution_total{{feature="amount",model="{MODEL}",version="v1.2.0"}} 2.0' in metrics
    )


@pytest.mark.parametrize("value", [float("nan"), "NaN", None])
def test_nan_and_missing_values_stay_refused(client: TestClient, value: Any) -> None:
    body = orjson.dumps({"features": [1.0, 3, 0.5, True]}).replace(
        b"1.0", str(value).encode() if value else b"null"
    )
    assert client.post("/predict", content=body).status_code in (400, 422)


def test_refuse_keeps_the_422_for_models_that_need_it(served: Version) -> None:
    signature = SIGNATURE.model_copy(update={"on_out_of_range": "refuse"})
    spec = served.spec.__class__(**{**served.spec.__dict__, "signature": signature})
    with TestClient(create_app(build(spec, Settings(drift_interval_s=3600)))) as client:
        response = client.post("/predict", json={"features": [60_000.0, 3, 0.5, True]})
    assert response.status_code == 422
    assert "outside the signature's range [0, 10000]" in response.json()["error"]


# ---------------------------------------------------------------- the Open Inference Protocol


def triton_input(rows: np.ndarray[Any, Any], datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(
        rows.astype({"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}[datatype]), binary_data=binary
    )
    return tensor


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_triton_client_infers(
    running_server: ServerProcess, served: Version, datatype: str, binary: bool
) -> None:
    client = triton.InferenceServerClient(running_server.url.removeprefix("http://"))
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL)["inputs"][0]["shape"] == [-1, 4]
    rows = ROWS.astype(np.float32).astype(np.float64) if datatype == "FP32" else ROWS
    outputs = [
        triton.InferRequestedOutput("predict_proba", binary_data=binary),
        triton.InferRequestedOutput("predict", binary_data=binary),
    ]
    result = client.infer(MODEL, [triton_input(ROWS, datatype, binary)], outputs=outputs)
    classes, probabilities = expected(served, rows)
    np.testing.assert_allclose(result.as_numpy("predict_proba"), probabilities, rtol=0, atol=PARITY_TOLERANCE)
    assert [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("predict")] == classes


def test_triton_client_default_asks_for_binary_outputs(
    running_server: ServerProcess, served: Version
) -> None:
    client = triton.InferenceServerClient(running_server.url.removeprefix("http://"))
    result = client.infer(MODEL, [triton_input(ROWS, "INT64", binary=True)])  # no outputs: all binary
    rows = ROWS.astype(np.int64).astype(np.float64)
    np.testing.assert_allclose(
        result.as_numpy("predict_proba"), expected(served, rows)[1], atol=PARITY_TOLERANCE
    )
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] > 0


def test_binary_data_of_the_wrong_size_is_a_422(client: TestClient) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP64", "parameters": {"binary_data_size": 32}}
            ]
        }
    )
    response = client.post(
        f"/v2/models/{MODEL}/infer",
        content=header + np.zeros(3).tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert response.status_code == 422
    assert "takes 32 bytes" in response.json()["error"]
