"""The HTTP API: `/predict`, the Open Inference Protocol v2, `/feedback`, `/version`, `/metrics`.

Bad input is always a 4xx with `{"error": ...}` saying what to fix; a 5xx means a real
server fault, and is counted in model_errors_total{type="internal"}.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelctl.core.contract import LIVE_PATH, METRICS_PATH, READY_PATH
from modelctl.core.servingspec import ServingSpec
from serving import BUILD
from serving.batcher import Batcher, Predictions
from serving.feedback import LiveScores, PredictionMemory
from serving.inputs import (
    INFER_OUTPUTS,
    MAX_REQUEST_ID,
    ClientError,
    RowChecker,
    infer_request,
    invalid,
    parse_json,
    predict_rows,
)
from serving.loader import LoadedModel, Matrix
from serving.metrics import CONTENT_TYPE, ServerMetrics
from serving.monitor import DriftMonitor

log = logging.getLogger("serving")


@dataclass(frozen=True)
class Settings:
    max_batch_rows: int = 64
    max_wait_ms: float = 0.5
    max_rows: int = 1000
    max_body_bytes: int = 1 << 20
    feedback_capacity: int = 100_000
    feedback_ttl_s: float = 3600.0
    feedback_window: int = 10_000
    drift_window: int = 10_000
    drift_interval_s: float = 30.0


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


class ModelServer:
    """One served version and everything that observes it."""

    def __init__(
        self, spec: ServingSpec, model: LoadedModel, drift: DriftMonitor, settings: Settings
    ) -> None:
        self.spec = spec
        self.model = model
        self.settings = settings
        self.drift = drift
        self.metrics = ServerMetrics(spec.model, spec.version, spec.sha256, spec.signature.names)
        self.checker = RowChecker(spec.signature, settings.max_rows)
        self.batcher = Batcher(
            model.predict_proba, self._observe, settings.max_batch_rows, settings.max_wait_ms / 1000
        )
        self.memory = PredictionMemory(settings.feedback_capacity, settings.feedback_ttl_s)
        self.scores = LiveScores(model.positive_index, settings.feedback_window)
        self._classes = np.array(model.classes, dtype=object)

    def _observe(self, rows: Matrix, probabilities: Matrix) -> None:
        outside = self.drift.observe(rows)
        self.metrics.batch(probabilities, self.model.positive_index, outside)

    # ---------------------------------------------------------------- request plumbing

    def guarded(self, handler: Handler, *, prediction: bool) -> Handler:
        """`handler` with client errors as JSON 4xx, faults as counted 500s; predictions timed."""

        async def endpoint(request: Request) -> Response:
            started = perf_counter()
            try:
                response = await handler(request)
            except ClientError as exc:
                self.metrics.error(exc.kind)
                response = error_response(exc.status, exc.message)
            except Exception:
                log.exception("internal error on %s %s", request.method, request.url.path)
                self.metrics.error("internal")
                response = error_response(500, "internal server error; it is logged and counted")
            if prediction:
                ok = response.status_code == 200
                self.metrics.request(response.status_code, perf_counter() - started if ok else None)
            return response

        return endpoint

    async def read_json(self, request: Request) -> Any:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise ClientError(
                415, "unsupported_media_type", "send the body with Content-Type: application/json"
            )
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise self._too_large()
        if length:
            return parse_json(await request.body())
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise self._too_large()
        return parse_json(bytes(body))

    def _too_large(self) -> ClientError:
        limit = self.settings.max_body_bytes
        return ClientError(
            413, "body_too_large", f"the body is over {limit} bytes; send fewer rows per request"
        )

    def check_model(self, request: Request) -> None:
        name = request.path_params["name"]
        version = request.path_params.get("version", self.spec.version)
        if name != self.spec.model or version != self.spec.version:
            raise ClientError(
                404,
                "unknown_model",
                f"this server serves model {self.spec.model!r} version {self.spec.version}, not {name!r} {version}",
            )

    async def predict_once(self, rows: list[list[Any]], request_id: str) -> Predictions:
        result = await self.batcher.submit(rows)
        self.memory.remember(request_id, result.classes.tolist())
        return result

    # ---------------------------------------------------------------- endpoints

    async def predict(self, request: Request) -> Response:
        rows, single = predict_rows(await self.read_json(request), self.checker)
        request_id = _request_id(request.headers.get("x-request-id"))
        result = await self.predict_once(rows, request_id)
        answer: dict[str, Any] = {
            "model": self.spec.model,
            "version": self.spec.version,
            "request_id": request_id,
        }
        if single:
            answer["prediction"] = self.model.classes[result.classes[0]]
            answer["probability"] = result.probabilities[0]
        else:
            answer["predictions"] = self._classes[result.classes].tolist()
            answer["probabilities"] = result.probabilities
        answer["timestamp"] = result.timestamp
        return JSONResponse(answer)

    async def infer(self, request: Request) -> Response:
        self.check_model(request)
        infer = infer_request(await self.read_json(request), self.checker)
        request_id = infer.id or _request_id(request.headers.get("x-request-id"))
        result = await self.predict_once(infer.rows, request_id)
        count = len(infer.rows)
        tensors = {
            "predict": {
                "name": "predict",
                "shape": [count],
                "datatype": "BYTES",
                "data": self._classes[result.classes].tolist(),
            },
            "predict_proba": {
                "name": "predict_proba",
                "shape": [count, len(self.model.classes)],
                "datatype": "FP64",
                "data": result.probabilities.ravel(),
            },
        }
        return JSONResponse(
            {
                "model_name": self.spec.model,
                "model_version": self.spec.version,
                "id": request_id,
                "outputs": [tensors[name] for name in infer.outputs],
            }
        )

    async def feedback(self, request: Request) -> Response:
        body = await self.read_json(request)
        request_id, labels = self._feedback_labels(body)
        predicted = self.memory.take(request_id)
        if predicted is None:
            raise ClientError(
                404,
                "unknown_request",
                f"request_id {request_id!r} is unknown, already labelled, or older than the feedback window "
                f"({self.settings.feedback_ttl_s:g} s, {self.settings.feedback_capacity} rows); send it sooner",
            )
        if len(labels) != len(predicted):
            self.memory.remember(request_id, predicted)
            raise invalid(f"request {request_id!r} predicted {len(predicted)} rows; send one label per row")
        for guess, label in zip(predicted, labels, strict=True):
            self.scores.add(guess, self.model.classes.index(label))
        scores = self.scores.scores()
        self.metrics.feedback(len(labels), scores.accuracy, scores.precision, scores.recall)
        return JSONResponse(
            {
                "request_id": request_id,
                "correct": [
                    self.model.classes[guess] == label for guess, label in zip(predicted, labels, strict=True)
                ],
                "accuracy": scores.accuracy,
                "precision": scores.precision,
                "recall": scores.recall,
                "labelled": scores.count,
            }
        )

    def _feedback_labels(self, body: Any) -> tuple[str, list[str]]:
        shape = 'send {"request_id": "...", "label": "<class>"} (or "labels": [...] for a batch)'
        if (
            type(body) is not dict
            or type(body.get("request_id")) is not str
            or ("label" in body) == ("labels" in body)
        ):
            raise invalid(shape)
        labels = [body["label"]] if "label" in body else body["labels"]
        if type(labels) is not list or not labels:
            raise invalid(shape)
        unknown = [label for label in labels if label not in self.model.classes]
        if unknown:
            raise invalid(f"label {unknown[0]!r} is not a class; use one of {list(self.model.classes)}")
        return body["request_id"], labels

    async def version(self, request: Request) -> Response:
        return JSONResponse(
            {
                "model": self.spec.model,
                "version": self.spec.version,
                "sha256": self.spec.sha256,
                "build": BUILD,
            }
        )

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        # The server listens only once the model is verified, loaded and warmed up.
        return JSONResponse({"ready": True})

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse({"name": self.spec.model, "ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "modelctl-serving", "version": BUILD, "extensions": []})

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        width, classes = len(self.spec.signature.features), len(self.model.classes)
        return JSONResponse(
            {
                "name": self.spec.model,
                "versions": [self.spec.version],
                "platform": "sklearn",
                "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, width]}],
                "outputs": [
                    {"name": INFER_OUTPUTS[0], "datatype": "BYTES", "shape": [-1]},
                    {"name": INFER_OUTPUTS[1], "datatype": "FP64", "shape": [-1, classes]},
                ],
                "parameters": {
                    "features": self.spec.signature.names,
                    "classes": list(self.model.classes),
                    "positive_class": self.spec.output.positive_class,
                    "sha256": self.spec.sha256,
                },
            }
        )

    def routes(self) -> list[Route]:
        def api(path: str, handler: Handler, method: str = "GET", prediction: bool = False) -> Route:
            return Route(path, self.guarded(handler, prediction=prediction), methods=[method])

        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        return [
            api("/predict", self.predict, "POST", prediction=True),
            api(f"{model}/infer", self.infer, "POST", prediction=True),
            api(f"{versioned}/infer", self.infer, "POST", prediction=True),
            api("/feedback", self.feedback, "POST"),
            api("/version", self.version),
            api(METRICS_PATH, self.metrics_text),
            api("/v2", self.server_metadata),
            api(LIVE_PATH, self.live),
            api(READY_PATH, self.ready),
            api(model, self.model_metadata),
            api(versioned, self.model_metadata),
            api(f"{model}/ready", self.model_ready),
            api(f"{versioned}/ready", self.model_ready),
        ]

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.metrics.watch_gc()
        drift_task = asyncio.create_task(self.drift.run(self.settings.drift_interval_s, self.metrics.drift))
        try:
            yield
        finally:
            drift_task.cancel()
            self.metrics.unwatch_gc()


def _request_id(header: str | None) -> str:
    # Istio and most gateways send x-request-id; reuse it so logs and feedback line up.
    if header and len(header) <= MAX_REQUEST_ID:
        return header
    return secrets.token_hex(16)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    hint = {404: "see serving/README.md for the endpoints", 405: "check the HTTP method"}
    return error_response(
        exc.status_code,
        f"{exc.detail.lower()}: {request.method} {request.url.path}; "
        f"{hint.get(exc.status_code, 'check the request')}",
    )


class ServingApp:
    """The ASGI app: `POST /predict` goes straight to its handler, everything else through Starlette.

    The prediction handler catches every error itself, so Starlette's routing and exception
    middleware (a fifth of the per-request CPU) are skipped where requests are most frequent.
    """

    def __init__(self, server: ModelServer) -> None:
        self.starlette = Starlette(
            routes=server.routes(), lifespan=server.lifespan, exception_handlers={HTTPException: _http_error}
        )
        self._predict = server.guarded(server.predict, prediction=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
            response = await self._predict(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)


def create_app(server: ModelServer) -> ServingApp:
    return ServingApp(server)
