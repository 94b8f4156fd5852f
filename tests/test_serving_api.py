"""The server's HTTP API in-process: every endpoint, every kind of bad input, feedback and metrics."""

from __future__ import annotations

import dataclasses
import gzip
import json
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import confusion_matrix

with warnings.catch_warnings():
    # Starlette now prefers the httpx2 package; the httpx it falls back to works the same here.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from onebox.processes import free_port
from serving.app import ModelServer, create_app
from serving.options import PARITY_TOLERANCE, Settings
from serving.receipts import Receipts
from serving.server import build
from tests.conftest import FeedbackStore
from tests.test_serving_helpers import SIGNATURE, Version, as_json_row, labels_for, reference_rows, served

__all__ = ["served"]  # the session fixture, used by name
MODEL = "fraud-detection"
JSON = {"content-type": "application/json"}


@pytest.fixture
def client(served: Version, feedback_store: FeedbackStore) -> Iterator[TestClient]:
    settings = feedback_store.settings(max_rows=50, max_body_bytes=20_000, drift_interval_s=3600)
    with TestClient(create_app(build(served.spec, settings)), raise_server_exceptions=False) as test_client:
        yield test_client


def post(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path, content=orjson.dumps(body), headers=JSON)


def metric_samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = frozenset({"model": MODEL, "version": "v1.2.0", **labels}.items())
    return samples[(name, key)]


ROWS = reference_rows(40, seed=7)


def test_predict_one_row_matches_the_model(client: TestClient, served: Version) -> None:
    response = post(client, "/predict", {"features": as_json_row(ROWS[0])})
    assert response.status_code == 200
    body = response.json()
    expected = served.estimator.predict_proba(ROWS[:1])[0]
    np.testing.assert_allclose(body["probability"], expected, rtol=0, atol=PARITY_TOLERANCE)
    assert body["prediction"] == ["legit", "fraud"][served.estimator.predict(ROWS[:1])[0]]
    assert (body["model"], body["version"]) == (MODEL, "v1.2.0")
    assert body["request_id"]
    assert body["timestamp"].startswith("20")


def test_predict_batch_matches_the_model(client: TestClient, served: Version) -> None:
    response = post(client, "/predict", {"instances": [as_json_row(r) for r in ROWS]})
    assert response.status_code == 200
    body = response.json()
    np.testing.assert_allclose(
        body["probabilities"], served.estimator.predict_proba(ROWS), rtol=0, atol=PARITY_TOLERANCE
    )
    assert body["predictions"] == [["legit", "fraud"][i] for i in served.estimator.predict(ROWS)]


def test_request_id_comes_from_the_gateway_header(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=orjson.dumps({"features": as_json_row(ROWS[0])}),
        headers={**JSON, "x-request-id": "gateway-42"},
    )
    assert response.json()["request_id"] == "gateway-42"


def test_open_inference_protocol(client: TestClient, served: Version) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    metadata = client.get(f"/v2/models/{MODEL}").json()
    assert metadata["versions"] == ["v1.2.0"]
    assert metadata["inputs"][0]["shape"] == [-1, 4]
    assert metadata["parameters"]["features"] == SIGNATURE.names
    assert client.get("/v2").json()["name"] == "modelctl-serving"

    rows = [as_json_row(r) for r in ROWS[:3]]
    flat = [value for row in rows for value in row]
    for data in (flat, rows):
        tensor = {"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": data}
        response = post(client, f"/v2/models/{MODEL}/infer", {"id": "abc", "inputs": [tensor]})
        assert response.status_code == 200
        body = response.json()
        assert (body["model_name"], body["model_version"], body["id"]) == (MODEL, "v1.2.0", "abc")
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["predict"]["data"] == [
            ["legit", "fraud"][i] for i in served.estimator.predict(ROWS[:3])
        ]
        assert outputs["predict_proba"]["shape"] == [3, 2]
        np.testing.assert_allclose(
            outputs["predict_proba"]["data"],
            served.estimator.predict_proba(ROWS[:3]).ravel(),
            rtol=0,
            atol=PARITY_TOLERANCE,
        )

    only = post(
        client,
        f"/v2/models/{MODEL}/versions/v1.2.0/infer",
        {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": rows[0]}],
            "outputs": [{"name": "predict"}],
        },
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["predict"]


def test_version_endpoint(client: TestClient, served: Version) -> None:
    body = client.get("/version").json()
    assert body["model"] == MODEL
    assert body["version"] == "v1.2.0"
    assert body["sha256"] == served.spec.sha256
    assert body["build"]


GOOD = as_json_row(ROWS[0])
TENSOR = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": GOOD}
BAD_BODIES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("invalid JSON", "/predict", b'{"features": [1, 2', JSON, 400, "not valid JSON"),
    ("NaN literal", "/predict", b'{"features": [NaN, 1, 0.5, true]}', JSON, 400, "not valid JSON"),
    ("Infinity by overflow", "/predict", b'{"features": [1e400, 1, 0.5, true]}', JSON, 400, "not valid JSON"),
    ("empty body", "/predict", b"", JSON, 400, "not valid JSON"),
    ("a list, not an object", "/predict", b"[1, 2]", JSON, 422, '"features"'),
    ("neither key", "/predict", b'{"rows": []}', JSON, 422, '"instances"'),
    ("an extra key", "/predict", orjson.dumps({"features": GOOD, "id": 7}), JSON, 422, "unknown key(s) 'id'"),
    ("wrong feature count", "/predict", orjson.dumps({"features": GOOD[:3]}), JSON, 422, "send a list of 4 values"),
    ("a string value", "/predict", orjson.dumps({"features": ["12", *GOOD[1:]]}), JSON, 422, "send a number"),
    ("a null value", "/predict", orjson.dumps({"features": [None, *GOOD[1:]]}), JSON, 422, "send a number"),
    ("a bool for a number", "/predict", orjson.dumps({"features": [True, *GOOD[1:]]}), JSON, 422, "send a number"),
    ("a fraction for an int", "/predict", orjson.dumps({"features": [1.0, 3.5, 0.5, True]}), JSON, 422, "whole number"),
    ("a number for a bool", "/predict", orjson.dumps({"features": [1.0, 3, 0.5, 7]}), JSON, 422, "true or false"),
    ("a null for a bool", "/predict", orjson.dumps({"features": [1.0, 3, 0.5, None]}), JSON, 422, "is null; send true"),
    ("empty instances", "/predict", orjson.dumps({"instances": []}), JSON, 422, "non-empty list"),
    ("too many rows", "/predict", orjson.dumps({"instances": [GOOD] * 51}), JSON, 413, "at most 50"),
    ("too large a body", "/predict", b'{"features": [' + b" " * 30_000 + b"]}", JSON, 413, "over 20000 bytes"),
    ("wrong content type", "/predict", orjson.dumps({"features": GOOD}), {"content-type": "text/plain"}, 415, "Content-Type"),
    ("unknown model", "/v2/models/churn/infer", orjson.dumps({"inputs": [TENSOR]}), JSON, 404, 'not "churn"'),
    ("unknown version", "/v2/models/fraud-detection/versions/v9.9.9/infer", orjson.dumps({"inputs": [TENSOR]}), JSON, 404, "v9.9.9"),
    ("tensor of wrong shape", f"/v2/models/{MODEL}/infer", orjson.dumps({"inputs": [{**TENSOR, "shape": [1, 5]}]}), JSON, 422, "[rows, 4]"),
    ("tensor of text", f"/v2/models/{MODEL}/infer", orjson.dumps({"inputs": [{**TENSOR, "datatype": "BYTES"}]}), JSON, 422, "datatype"),
    ("tensor data short", f"/v2/models/{MODEL}/infer", orjson.dumps({"inputs": [{**TENSOR, "data": GOOD[:2]}]}), JSON, 422, "does not hold"),
    ("unknown output", f"/v2/models/{MODEL}/infer", orjson.dumps({"inputs": [TENSOR], "outputs": [{"name": "x"}]}), JSON, 422, "outputs"),
    ("too long an id", f"/v2/models/{MODEL}/infer", orjson.dumps({"id": "x" * 129, "inputs": [TENSOR]}), JSON, 422, "1 to 128"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_bad_input_is_a_4xx_saying_what_to_fix(
    client: TestClient, case: tuple[str, str, bytes, dict[str, str], int, str]
) -> None:
    _, path, body, headers, status, hint = case
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == status
    assert hint in response.json()["error"]


def deflated(data: bytes) -> bytes:
    return zlib.compress(data)


COMPRESSED = [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", deflated)]


@pytest.mark.parametrize(("coding", "compress"), COMPRESSED, ids=[c[0] for c in COMPRESSED])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", {"features": GOOD}),
        ("/invocations", {"instances": [GOOD]}),
        (f"/v2/models/{MODEL}/infer", {"inputs": [TENSOR]}),
    ],
    ids=["predict", "invocations", "oip"],
)
def test_a_compressed_body_is_decoded_as_its_content_encoding_says(
    client: TestClient, coding: str, compress: Callable[[bytes], bytes], path: str, body: Any
) -> None:
    plain = client.post(path, content=orjson.dumps(body), headers=JSON)
    packed = client.post(
        path, content=compress(orjson.dumps(body)), headers={**JSON, "content-encoding": coding}
    )
    assert packed.status_code == plain.status_code == 200
    assert answered(packed.json()) == answered(plain.json())


def answered(body: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs per request (its id, time and receipt)."""
    return {
        k: answered(v) if k == "parameters" else v
        for k, v in body.items()
        if k not in {"request_id", "id", "timestamp", "receipt"}
    }


def test_compressed_feedback_is_taken(client: TestClient) -> None:
    predicted = post(client, "/predict", {"features": GOOD}).json()
    body = gzip.compress(orjson.dumps({"receipt": predicted["receipt"], "label": predicted["prediction"]}))
    assert (
        client.post("/feedback", content=body, headers={**JSON, "content-encoding": "gzip"}).status_code
        == 200
    )


BAD_CODINGS: list[tuple[str, bytes, str, int, str]] = [
    ("brotli", b"\x1b\x00", "br", 415, 'Content-Encoding "br" is not supported'),
    ("unknown coding", orjson.dumps({"features": GOOD}), "compress", 415, "gzip, deflate or uncompressed"),
    ("not gzip at all", orjson.dumps({"features": GOOD}), "gzip", 400, "not valid gzip"),
    ("truncated gzip", gzip.compress(orjson.dumps({"features": GOOD}))[:-12], "gzip", 400, "truncated"),
    ("a bomb over the limit", gzip.compress(b" " * 5_000_000), "gzip", 413, "over 20000 bytes"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CODINGS, ids=[c[0] for c in BAD_CODINGS])
@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_a_body_not_in_its_declared_coding_is_a_4xx_naming_the_coding(
    client: TestClient, case: tuple[str, bytes, str, int, str], path: str
) -> None:
    _, body, coding, status, hint = case
    response = client.post(path, content=body, headers={**JSON, "content-encoding": coding})
    assert response.status_code == status
    assert hint in response.json()["error"]
    if status == 415:
        assert response.headers["accept-encoding"] == "gzip, deflate, identity"


def test_unknown_paths_and_methods_are_json_errors(client: TestClient) -> None:
    assert client.get("/nothing-here").json()["error"].startswith("not found")
    response = client.get("/predict")
    assert response.status_code == 405
    assert "method" in response.json()["error"]


def test_a_body_without_content_type_is_read_as_json(client: TestClient) -> None:
    # As Triton's client and curl --data-binary send it.
    response = client.post("/predict", content=orjson.dumps({"features": GOOD}))
    assert response.status_code == 200


def test_bad_input_is_counted_by_type_and_code(client: TestClient) -> None:
    post(client, "/predict", {"features": ["1", 3, 0.5, True]})
    client.post("/predict", content=b"{", headers=JSON)
    samples = metric_samples(client)
    assert sample(samples, "model_errors_total", type="invalid_input") == 1
    assert sample(samples, "model_errors_total", type="invalid_json") == 1
    assert sample(samples, "model_requests_total", code="422") == 1
    assert sample(samples, "model_requests_total", code="400") == 1


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
ROW_LIKE = st.lists(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3), max_size=6)
BODIES = (
    JSON_VALUES
    | st.fixed_dictionaries({"features": ROW_LIKE | JSON_VALUES})
    | st.fixed_dictionaries({"instances": st.lists(ROW_LIKE, max_size=4) | JSON_VALUES})
    | st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.text(max_size=3),
                        "shape": st.lists(st.integers(-2, 6), max_size=3) | JSON_VALUES,
                        "datatype": st.sampled_from(["FP64", "INT64", "BOOL", "BYTES"]) | JSON_VALUES,
                        "data": ROW_LIKE | st.lists(ROW_LIKE, max_size=3) | JSON_VALUES,
                    }
                ),
                max_size=2,
            ),
            "outputs": JSON_VALUES,
        }
    )
)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=BODIES, path=st.sampled_from(["/predict", f"/v2/models/{MODEL}/infer", "/feedback"]))
def test_no_json_body_causes_a_5xx(client: TestClient, body: Any, path: str) -> None:
    # The standard library writes what orjson will not: huge integers, NaN and Infinity.
    response = client.post(path, content=json.dumps(body), headers=JSON)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"]


def test_feedback_counts_a_confusion_matrix_and_sums_values(client: TestClient, served: Version) -> None:
    rows = reference_rows(30, seed=11)
    truth = labels_for(rows)
    truth[:5] = 1 - truth[:5]  # some labels the model cannot have got right
    predicted = served.estimator.predict(rows)
    receipts = [post(client, "/predict", {"features": as_json_row(row)}).json()["receipt"] for row in rows]
    for index, (receipt, label) in enumerate(zip(receipts, truth, strict=True)):
        body = {"receipt": receipt, "label": ["legit", "fraud"][label], "value": index * 0.5}
        response = post(client, "/feedback", body)
        assert response.status_code == 200
        assert response.json()["correct"] == [bool(label == predicted[index])]
        assert response.json()["counted"] is True
    samples = metric_samples(client)
    matrix = confusion_matrix(truth, predicted, labels=[0, 1])
    for (actual, guess), expected in np.ndenumerate(matrix):
        names = {"actual": ["legit", "fraud"][actual], "predicted": ["legit", "fraud"][guess]}
        assert sample(samples, "model_feedback_total", **names) == expected
    assert sample(samples, "model_feedback_value_sum") == pytest.approx(sum(i * 0.5 for i in range(30)))
    assert sample(samples, "model_feedback_value_count") == 30


def test_every_prediction_answer_carries_its_signed_receipt(
    client: TestClient, served: Version, feedback_store: FeedbackStore
) -> None:
    key = (feedback_store.secret / "receipt-keys").read_text().split()[0]
    answers = {
        "predict": post(client, "/predict", {"features": GOOD}).json()["receipt"],
        "batch": post(client, "/predict", {"instances": [as_json_row(r) for r in ROWS[:3]]}).json()[
            "receipt"
        ],
        "invocations": post(client, "/invocations", {"inputs": [as_json_row(ROWS[0])]}).json()["receipt"],
        "kserve": post(client, f"/v1/models/{MODEL}:predict", {"instances": [GOOD]}).json()["receipt"],
        "infer": post(
            client,
            f"/v2/models/{MODEL}/infer",
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, len(GOOD)],
                        "datatype": "FP64",
                        "data": [float(v) for v in GOOD],
                    }
                ]
            },
        ).json()["parameters"]["receipt"],
    }
    ids = set()
    for where, receipt in answers.items():
        # Any JWT library reads it: PyJWT with the Secret's key and HS256.
        claims = jwt.decode(receipt, key, algorithms=["HS256"])
        assert (claims["model"], claims["version"]) == (MODEL, "v1.2.0"), where
        assert claims["exp"] - claims["iat"] == 35 * 86400
        assert set(claims["class"]) <= {"legit", "fraud"}
        ids.add(claims["jti"])
    batch = jwt.decode(answers["batch"], key, algorithms=["HS256"])
    expected = served.estimator.predict_proba(ROWS[:3])
    assert batch["class"] == [["legit", "fraud"][i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(batch["score"], expected[:, 1], rtol=0, atol=PARITY_TOLERANCE)
    assert len(ids) == len(answers)


def test_a_label_counts_once_and_a_different_one_is_refused(client: TestClient) -> None:
    answer = post(client, "/predict", {"features": GOOD}).json()
    body = {"receipt": answer["receipt"], "label": "fraud", "value": 3}
    first, retry = post(client, "/feedback", body), post(client, "/feedback", body)
    assert (first.status_code, retry.status_code) == (200, 200)
    assert (first.json()["counted"], retry.json()["counted"]) == (True, False)
    assert retry.json()["correct"] == first.json()["correct"]
    other = post(client, "/feedback", {**body, "label": "legit"})
    assert other.status_code == 409
    assert 'already has its label ["fraud"] with value 3' in other.json()["error"]
    samples = metric_samples(client)
    assert (
        sum(sample(samples, "model_feedback_total", actual="fraud", predicted=p) for p in ("legit", "fraud"))
        == 1
    )
    assert sample(samples, "model_feedback_value_count") == 1


def test_feedback_value_must_be_a_number_of_at_least_zero(client: TestClient) -> None:
    receipt = post(client, "/predict", {"features": GOOD}).json()["receipt"]
    for value in (-1, "12", True):
        response = post(client, "/feedback", {"receipt": receipt, "label": "fraud", "value": value})
        assert response.status_code == 422
        assert "value" in response.json()["error"]


def test_feedback_for_a_batch_takes_one_label_per_row(client: TestClient) -> None:
    receipt = post(client, "/predict", {"instances": [as_json_row(r) for r in ROWS[:2]]}).json()["receipt"]
    short = post(client, "/feedback", {"receipt": receipt, "label": "fraud"})
    assert short.status_code == 422
    assert "2 rows and 1 labels" in short.json()["error"]
    response = post(client, "/feedback", {"receipt": receipt, "labels": ["fraud", "legit"]})
    assert response.status_code == 200
    assert len(response.json()["correct"]) == 2


def test_feedback_refuses_forged_and_foreign_receipts_and_unknown_labels(client: TestClient) -> None:
    receipt = post(client, "/predict", {"features": GOOD}).json()["receipt"]
    header, claims, signature = receipt.split(".")
    forged_claims = jwt.utils.base64url_encode(
        orjson.dumps({**orjson.loads(jwt.utils.base64url_decode(claims)), "class": ["legit"]})
    ).decode()
    cases = {
        "forged": f"{header}.{forged_claims}.{signature}",
        "another key": jwt.encode({"jti": "x", "iat": 1, "exp": 2**40}, "k" * 32, algorithm="HS256"),
        "not a token": "order-17",
    }
    for name, token in cases.items():
        response = post(client, "/feedback", {"receipt": token, "label": "fraud"})
        assert response.status_code == 422, name
        assert response.json()["error"].startswith("the receipt is not valid"), name
    wrong = post(client, "/feedback", {"receipt": receipt, "label": "maybe"})
    assert wrong.status_code == 422
    assert "legit" in wrong.json()["error"]
    assert post(client, "/feedback", {"receipt": receipt, "label": "fraud"}).status_code == 200


def test_a_label_by_request_id_alone_says_what_to_send(client: TestClient) -> None:
    request_id = post(client, "/predict", {"features": GOOD}).json()["request_id"]
    response = post(client, "/feedback", {"request_id": request_id, "label": "fraud"})
    assert response.status_code == 422
    assert "request_id alone is no longer taken" in response.json()["error"]
    assert '"receipt"' in response.json()["error"]


def test_an_expired_receipt_is_refused_with_410(client: TestClient) -> None:
    server = client.app.server  # type: ignore[attr-defined]
    now = time.time()
    server.receipts.clock = lambda: now - 36 * 86400  # issued 36 days ago, for 35 days
    receipt = post(client, "/predict", {"features": GOOD}).json()["receipt"]
    server.receipts.clock = lambda: now
    response = post(client, "/feedback", {"receipt": receipt, "label": "fraud"})
    assert response.status_code == 410
    assert "expired at" in response.json()["error"]
    assert "within 35 days" in response.json()["error"]


def test_a_label_for_another_version_counts_on_that_version_after_a_scrape(client: TestClient) -> None:
    server = client.app.server  # type: ignore[attr-defined]
    receipts = server.receipts
    other = Receipts([receipts._signing], MODEL, "v1.0.0", ["legit", "fraud"], ttl=3600)
    for _ in range(2):
        response = post(client, "/feedback", {"receipt": other.issue(["fraud"], [0.9]), "label": "fraud"})
        assert response.status_code == 200
        assert response.json()["version"] == "v1.0.0"
    cell = {"actual": "fraud", "predicted": "fraud"}
    first = metric_samples(client)  # the new version's series, at 0: rate() can count from here
    key = frozenset({"model": MODEL, "version": "v1.0.0", **cell}.items())
    assert first[("model_feedback_total", key)] == 0
    assert metric_samples(client)[("model_feedback_total", key)] == 2
    assert sample(metric_samples(client), "model_feedback_total", **cell) == 0  # its own version: none


def test_feedback_store_down_is_a_503_that_counts_nothing(
    served: Version, feedback_store: FeedbackStore
) -> None:
    unused = f"redis://127.0.0.1:{free_port()}/0"
    settings = feedback_store.settings(drift_interval_s=3600, feedback_store=unused)
    with TestClient(create_app(build(served.spec, settings)), raise_server_exceptions=False) as down:
        receipt = post(down, "/predict", {"features": GOOD}).json()["receipt"]
        response = post(down, "/feedback", {"receipt": receipt, "label": "fraud"})
        assert response.status_code == 503
        assert "nothing was counted: send the label again later" in response.json()["error"]
        assert "password" not in response.json()["error"]


def test_without_a_store_no_receipts_and_no_labels(served: Version) -> None:
    with TestClient(create_app(build(served.spec, Settings(drift_interval_s=3600)))) as bare:
        answer = post(bare, "/predict", {"features": GOOD}).json()
        assert "receipt" not in answer
        response = post(bare, "/feedback", {"receipt": "x.y.z", "label": "fraud"})
        assert response.status_code == 503
        assert "--feedback-secret and --feedback-store" in response.json()["error"]


def test_metrics_describe_predictions(client: TestClient, served: Version) -> None:
    post(client, "/predict", {"features": GOOD})
    post(client, "/predict", {"instances": [as_json_row(r) for r in ROWS[:5]]})
    samples = metric_samples(client)
    assert sample(samples, "model_requests_total", code="200") == 2
    assert sample(samples, "model_predictions_total") == 6
    assert sample(samples, "model_prediction_duration_seconds_count") == 2
    assert sample(samples, "model_prediction_score_count") == 6
    scores = [
        served.estimator.predict_proba(np.array([ROWS[0]]))[0, 1],
        *served.estimator.predict_proba(ROWS[:5])[:, 1],
    ]
    assert sample(samples, "model_prediction_score_sum") == pytest.approx(sum(scores))
    assert sample(samples, "model_prediction_score_bucket", le="0.5") == sum(s <= 0.5 for s in scores)
    assert sample(samples, "model_batch_size_sum") == 6
    assert sample(samples, "model_info", sha256=served.spec.sha256) == 1
    for name in SIGNATURE.names:
        assert sample(samples, "model_out_of_distribution_total", feature=name) == 0
    for name in SIGNATURE.names:
        assert np.isnan(
            sample(samples, "model_feature_drift_p_value", feature=name)
        )  # no window computed yet
    assert sample(samples, "model_feedback_total", actual="fraud", predicted="legit") == 0
    assert (
        "model_gc_pause_seconds_count",
        frozenset({"model": MODEL, "version": "v1.2.0", "generation": "0"}.items()),
    ) in samples


def test_rows_outside_the_reference_range_are_counted(client: TestClient) -> None:
    # Inside the signature (so served), far outside what the model was trained on.
    outlier = [9_999.0, 3, 0.5, True]
    assert post(client, "/predict", {"instances": [outlier, GOOD, outlier]}).status_code == 200
    samples = metric_samples(client)
    assert sample(samples, "model_out_of_distribution_total", feature="amount") == 2
    assert sample(samples, "model_out_of_distribution_total", feature="hour") == 0


def test_drift_is_published_per_feature_off_the_request_path(served: Version) -> None:
    server = build(served.spec, Settings(drift_interval_s=0.05))
    rows = reference_rows(400, seed=21)
    rows[:, 2] = np.random.default_rng(21).beta(5, 2, len(rows))  # merchant_risk moves up
    with TestClient(create_app(server)) as test_client:
        assert (
            post(test_client, "/predict", {"instances": [as_json_row(r) for r in rows[:200]]}).status_code
            == 200
        )
        assert (
            post(test_client, "/predict", {"instances": [as_json_row(r) for r in rows[200:]]}).status_code
            == 200
        )
        drift = {}
        for _ in range(200):
            samples = metric_samples(test_client)
            drift = {
                name: sample(samples, "model_feature_drift_p_value", feature=name) for name in SIGNATURE.names
            }
            if not np.isnan(drift["merchant_risk"]):
                break
            time.sleep(0.05)
    assert drift["merchant_risk"] < 1e-6
    assert min(drift["amount"], drift["hour"], drift["is_foreign"]) > 0.001  # the alert's threshold


def test_a_streamed_body_is_limited_too(client: TestClient) -> None:
    # No Content-Length (chunked): the limit applies while reading.
    chunks = iter([b'{"instances": [', b"[1.0, 3, 0.5, true]," * 2_000, b"[1.0, 3, 0.5, true]]}"])
    response = client.post("/predict", content=chunks, headers=JSON)
    assert response.status_code == 413
    assert "over 20000 bytes" in response.json()["error"]
    small = iter([b'{"features": ', orjson.dumps(GOOD), b"}"])
    assert client.post("/predict", content=small, headers=JSON).status_code == 200


@dataclasses.dataclass
class BrokenRuntime:
    working: Any

    def predict_proba(self, rows: Any) -> Any:
        raise RuntimeError("the model is broken")

    def metadata(self) -> dict[str, Any]:
        return dict(self.working.metadata())


def test_a_model_fault_is_a_counted_500(served: Version) -> None:
    working = build(served.spec, Settings())
    broken = dataclasses.replace(working.model, runtime=BrokenRuntime(working.model.runtime))
    server = ModelServer(served.spec, broken, working.drift, Settings())
    with TestClient(create_app(server), raise_server_exceptions=False) as test_client:
        response = post(test_client, "/predict", {"features": GOOD})
        assert response.status_code == 500
        assert "logged and counted" in response.json()["error"]
        samples = metric_samples(test_client)
    assert sample(samples, "model_errors_total", type="internal") == 1
    assert sample(samples, "model_requests_total", code="500") == 1
