"""The HTTP API: `/predict`, the Open Inference Protocol v2, `/feedback`, `/version`, `/metrics`.

Bad input is always a 4xx with `{"error": ...}` saying what to fix; a 5xx means a real
server fault, and is counted in model_errors_total{type="internal"}.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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
from serving.feedback import LabelStore, label_path, stored_label
from serving.inputs import (
    INFER_OUTPUTS,
    MAX_REQUEST_ID,
    ClientError,
    RowChecker,
    Rows,
    infer_request,
    invalid,
    mlflow_rows,
    parse_json,
    predict_rows,
    show,
)
from serving.loader import Matrix
from serving.metrics import CONTENT_TYPE, ServerMetrics
from serving.model import LoadedModel
from serving.monitor import DriftMonitor
from serving.options import Settings
from serving.predlog import PredictionLog
from serving.receipts import Receipts

log = logging.getLogger("serving")
# The binary tensor data extension's header: the length of the JSON before the tensor bytes.
BINARY_HEADER = "Inference-Header-Content-Length"
FEEDBACK_KEYS = frozenset({"receipt", "request_id", "label", "labels", "value"})
FEEDBACK_SHAPE = (
    'send {"receipt": "<the receipt of the prediction\'s answer>", "label": "<class>"} (or "labels": '
    '[...], one per row of the prediction), optionally with "value": <a number, e.g. revenue>'
)
# Content codings a body may carry (RFC 9110 section 8.4.1) -> zlib's wbits for them; gzip and
# deflate are what HTTP clients (tritonclient, requests with a compressed body) send.
CONTENT_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate, identity"


NUMPY = orjson.OPT_SERIALIZE_NUMPY


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=NUMPY)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=_error_headers(status))


def _error_headers(status: int) -> dict[str, str]:
    """A 415 names the content codings the server reads (RFC 7694 section 3)."""
    return {"accept-encoding": ACCEPT_ENCODING} if status == 415 else {}


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
        self.metrics = ServerMetrics(
            spec.model, spec.version, spec.sha256, spec.signature.names, spec.output.classes
        )
        engine = model.metadata()
        self.metrics.engine(engine["engine"], engine["fallback_from"] or "", engine["parity_error"])
        self.checker = RowChecker(spec.signature, settings.max_rows)
        self.batcher = Batcher(
            model.predict_proba, self._observe, settings.max_batch_rows, settings.max_wait_ms / 1000
        )
        feedback = label_path(settings, spec.model, spec.version, model.classes)
        self.receipts: Receipts | None = feedback[0] if feedback else None
        self.labels: LabelStore | None = feedback[1] if feedback else None
        self.predlog = (
            PredictionLog(
                settings.prediction_log, settings.prediction_log_sample, model=spec.model,
                version=spec.version, classes=model.classes, positive_index=model.positive_index,
            )
            if settings.prediction_log
            else None
        )  # fmt: skip
        self._classes = np.array(model.classes, dtype=object)
        # BYTES elements in binary form: a 4-byte little-endian length, then the UTF-8 bytes.
        self._class_bytes = [struct.pack("<I", len(name.encode())) + name.encode() for name in model.classes]

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
            except Exception as exc:  # noqa: BLE001 — every failure becomes a JSON answer
                response = error_response(*self.failure(exc, f"{request.method} {request.url.path}"))
            if prediction:
                ok = response.status_code == 200
                self.metrics.request(response.status_code, perf_counter() - started if ok else None)
            return response

        return endpoint

    def failure(self, exc: Exception, where: str) -> tuple[int, str]:
        """The status and message answering `exc`: a client error's own, or a logged, counted 500."""
        if isinstance(exc, ClientError):
            self.metrics.error(exc.kind)
            return exc.status, exc.message
        log.exception("internal error on %s", where, exc_info=exc)
        self.metrics.error("internal")
        return 500, "internal server error; it is logged and counted"

    async def read_json(self, request: Request) -> Any:
        """The JSON body; 415 for a declared non-JSON type (no Content-Type is read as JSON, as
        Triton's and other OIP clients send it)."""
        self.check_media_type(request.headers.get("content-type"), binary=False)
        return parse_json(await self.read_body(request))

    async def read_infer(self, request: Request) -> tuple[Any, bytes]:
        """An inference request's JSON header and the binary tensor data after it, if any
        (the binary tensor data extension: `Inference-Header-Content-Length` bytes of JSON first)."""
        header_length = request.headers.get(BINARY_HEADER)
        self.check_media_type(request.headers.get("content-type"), binary=header_length is not None)
        body = await self.read_body(request)
        if header_length is None:
            return parse_json(body), b""
        if not header_length.isdigit() or int(header_length) > len(body):
            raise invalid(
                f"{BINARY_HEADER} is {show(header_length)}; send the JSON header's length in bytes "
                f"(at most the body's {len(body)})"
            )
        split = int(header_length)
        return parse_json(body[:split]), body[split:]

    @staticmethod
    def check_media_type(content_type: str | None, *, binary: bool) -> None:
        if content_type is None or content_type.startswith("application/json"):
            return
        if binary and content_type.startswith("application/octet-stream"):
            return
        raise ClientError(
            415, "unsupported_media_type", "send the body with Content-Type: application/json (or none)"
        )

    async def read_body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        body = await self.receive_body(request.receive, None if length is None else length.encode())
        return self.decode_body(body, request.headers.get("content-encoding"))

    def decode_body(self, body: bytes, encoding: str | None) -> bytes:
        """`body` with its `Content-Encoding` undone (gzip, deflate, identity, or a list of them,
        applied in order, RFC 9110 section 8.4).

        Raises
        ------
        ClientError
            415 for another coding (with `Accept-Encoding` in the answer, RFC 7694), 400 for bytes
            that are not what the header says, 413 once the decoded body is over `max_body_bytes`.
        """
        codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
        for coding in reversed(codings):
            if coding == "identity":
                continue
            if coding not in CONTENT_CODINGS:
                raise ClientError(
                    415,
                    "unsupported_media_type",
                    f"Content-Encoding {show(coding)} is not supported; send the body as "
                    f"{ACCEPT_ENCODING.replace(', identity', ' or uncompressed')}",
                )
            body = self._inflate(body, coding)
        return body

    def _inflate(self, body: bytes, coding: str) -> bytes:
        limit = self.settings.max_body_bytes
        inflater = zlib.decompressobj(CONTENT_CODINGS[coding])
        try:
            # One byte over the limit is enough to refuse: a small bomb never expands in memory.
            plain = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ClientError(
                400,
                "invalid_json",
                f"the body is not valid {coding} ({exc}); compress it again or send it plain",
            ) from None
        if len(plain) > limit:
            raise self._too_large()
        if not inflater.eof:
            raise ClientError(400, "invalid_json", f"the {coding} body is truncated; send the whole of it")
        return plain

    async def receive_body(self, receive: Receive, length: bytes | None) -> bytes:
        """The request body from ASGI messages, refused (413) once over `max_body_bytes`."""
        limit = self.settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise self._too_large()
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body", False) and len(body) <= limit:
            message = await receive()
            body += message.get("body", b"")
        if len(body) > limit:
            raise self._too_large()
        if message["type"] == "http.disconnect":
            raise ClientError(400, "invalid_json", "the client disconnected before sending the body")
        return body  # type: ignore[no-any-return]

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
                f"this server serves model {show(self.spec.model)} version {self.spec.version}, "
                f"not {show(name)} {version}",
            )

    async def predict_once(self, rows: Rows, request_id: str) -> Predictions:
        result = await self.batcher.submit(rows.rows)
        if self.predlog is not None:
            self.predlog.record(request_id, result)
        return result

    def receipt(self, result: Predictions) -> str | None:
        """The signed receipt of one request's rows (None when this server takes no labels)."""
        if self.receipts is None:
            return None
        positive = self.model.positive_index
        if result.end - result.start == 1:
            row = result.start
            classes = [self.model.classes[result.batch.class_list[row]]]
            scores = [result.batch.probability_rows[row][positive]]
        else:
            classes = self._classes[result.classes].tolist()
            scores = result.probabilities[:, positive].tolist()
        return self.receipts.issue(classes, scores)

    def answer(self, rows: Rows, result: Predictions, request_id: str) -> dict[str, Any]:
        """The /predict answer; `out_of_range` names the features outside their range, if any."""
        answer: dict[str, Any] = {
            "model": self.spec.model,
            "version": self.spec.version,
            "request_id": request_id,
        }
        if rows.single:
            row = result.start
            answer["prediction"] = self.model.classes[result.batch.class_list[row]]
            answer["probability"] = result.batch.probability_rows[row]
            if rows.flagged[0]:
                answer["out_of_range"] = rows.flagged[0]
        else:
            answer["predictions"] = self._classes[result.classes].tolist()
            answer["probabilities"] = result.probabilities
            if any(rows.flagged):
                answer["out_of_range"] = rows.flagged
        answer["timestamp"] = result.timestamp
        receipt = self.receipt(result)
        if receipt is not None:
            answer["receipt"] = receipt
        return answer

    async def _predict_rows(self, request: Request, rows: Rows) -> Response:
        request_id = _request_id(request.headers.get("x-request-id"))
        result = await self.predict_once(rows, request_id)
        return JSONResponse(self.answer(rows, result, request_id))

    # ---------------------------------------------------------------- endpoints

    async def predict(self, request: Request) -> Response:
        return await self._predict_rows(request, predict_rows(await self.read_json(request), self.checker))

    async def invocations(self, request: Request) -> Response:
        """MLflow's scoring protocol: the answer's `predictions` are the class names."""
        return await self._predict_rows(request, mlflow_rows(await self.read_json(request), self.checker))

    async def kserve_predict(self, request: Request) -> Response:
        """KServe's v1 protocol: `{"instances": [rows]}` in, `{"predictions": [...]}` out."""
        self.check_model(request)
        body = await self.read_json(request)
        if type(body) is not dict or "instances" not in body:
            raise invalid('send {"instances": [rows]}, each row a list of values or an object naming them')
        return await self._predict_rows(request, self.checker.rows(body["instances"], "instances"))

    async def infer(self, request: Request) -> Response:
        self.check_model(request)
        body, binary = await self.read_infer(request)
        infer = infer_request(body, self.checker, binary)
        request_id = infer.id or _request_id(request.headers.get("x-request-id"))
        result = await self.predict_once(infer.rows, request_id)
        header: dict[str, Any] = {
            "model_name": self.spec.model,
            "model_version": self.spec.version,
            "id": request_id,
        }
        parameters: dict[str, str] = {}
        flagged = sorted({name for names in infer.rows.flagged for name in names})
        if flagged:
            parameters["out_of_range"] = ",".join(flagged)
        receipt = self.receipt(result)
        if receipt is not None:
            parameters["receipt"] = receipt
        if parameters:
            header["parameters"] = parameters
        header["outputs"], chunks = self._tensors(infer.outputs, result)
        if not chunks:
            return JSONResponse(header)
        head = orjson.dumps(header)
        return Response(
            head + b"".join(chunks),
            media_type="application/octet-stream",
            headers={BINARY_HEADER: str(len(head))},
        )

    def _tensors(
        self, wanted: tuple[tuple[str, bool], ...], result: Predictions
    ) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The output tensors, with the binary ones' data as byte chunks in the same order."""
        count = len(result.classes)
        names = self._classes[result.classes].tolist()
        tensors, chunks = [], []
        for name, binary in wanted:
            if name == "predict":
                tensor: dict[str, Any] = {"name": name, "shape": [count], "datatype": "BYTES"}
                data: Any = names
                raw = (
                    b"".join(self._class_bytes[index] for index in result.classes.tolist()) if binary else b""
                )
            else:
                tensor = {"name": name, "shape": [count, len(self.model.classes)], "datatype": "FP64"}
                data = result.probabilities.ravel()
                raw = result.probabilities.astype("<f8").tobytes() if binary else b""
            if binary:
                tensor["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                tensor["data"] = data
            tensors.append(tensor)
        return tensors, chunks

    async def feedback(self, request: Request) -> Response:
        """A label for the prediction a receipt names, counted once on the version that made it,
        whichever replica (of whichever version of the model) takes it; the same label again is
        answered the same way and not counted, another label for it is a 409."""
        body = await self.read_json(request)
        token, labels, value = self._feedback_body(body)
        if self.receipts is None or self.labels is None:
            raise ClientError(
                503,
                "feedback_store",
                "this server takes no labels: it runs without --feedback-secret and --feedback-store "
                "(modelctl up and the cluster's Deployments set both)",
            )
        receipt = self.receipts.verify(token)
        if len(labels) != len(receipt.classes):
            raise invalid(
                f"the receipt's prediction has {len(receipt.classes)} rows and {len(labels)} labels came; "
                "send one label per row"
            )
        label = stored_label(labels, value)
        before = await self.labels.claim(receipt, label, self.receipts.clock())
        if before is not None and before != label:
            taken, taken_value = orjson.loads(before)
            raise ClientError(
                409,
                "already_labelled",
                f"prediction {receipt.id} already has its label {show(taken)}"
                + (f" with value {taken_value:g}" if taken_value is not None else "")
                + "; a label is final, so this one was not counted",
            )
        classes = self.model.classes
        pairs = [(classes.index(a), classes.index(p)) for a, p in zip(labels, receipt.classes, strict=True)]
        if before is None:
            self.metrics.feedback(receipt.version, pairs, value)
        answer = {
            "receipt_id": receipt.id,
            "model": receipt.model,
            "version": receipt.version,
            "predicted": list(receipt.classes),
            "correct": [a == p for a, p in pairs],
            "value": value,
            "counted": before is None,
        }
        if "request_id" in body:
            answer["request_id"] = body["request_id"]
        return JSONResponse(answer)

    def _feedback_body(self, body: Any) -> tuple[str, list[str], float | None]:
        if type(body) is dict and "receipt" not in body and "request_id" in body:
            raise invalid(
                "a label by request_id alone is no longer taken (only the replica that predicted knew "
                f"it, and request ids may repeat); {FEEDBACK_SHAPE}"
            )
        if (
            type(body) is not dict
            or type(body.get("receipt")) is not str
            or ("label" in body) == ("labels" in body)
            or not set(body) <= FEEDBACK_KEYS
        ):
            raise invalid(FEEDBACK_SHAPE)
        labels = [body["label"]] if "label" in body else body["labels"]
        if type(labels) is not list or not labels:
            raise invalid(FEEDBACK_SHAPE)
        unknown = [label for label in labels if label not in self.model.classes]
        if unknown:
            raise invalid(
                f"label {show(unknown[0])} is not a class; use one of {show(list(self.model.classes))}"
            )
        value = body.get("value")
        if value is not None and (type(value) not in (int, float) or not 0 <= value < math.inf):
            raise invalid(f"value is {show(value)}; send a number of at least 0 (it is summed in a counter)")
        return body["receipt"], labels, None if value is None else float(value)

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
        return JSONResponse(
            {"name": "modelctl-serving", "version": BUILD, "extensions": ["binary_tensor_data"]}
        )

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        width, classes = len(self.spec.signature.features), len(self.model.classes)
        return JSONResponse(
            {
                "name": self.spec.model,
                "versions": [self.spec.version],
                "platform": self.model.metadata()["platform"],
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
                    "engine": self.model.metadata()["engine"],
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
            api("/invocations", self.invocations, "POST", prediction=True),
            api("/v1/models/{name}:predict", self.kserve_predict, "POST", prediction=True),
            api("/v1/models/{name}", self.model_ready),
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
        log_task = asyncio.create_task(self.predlog.run()) if self.predlog else None
        try:
            yield
        finally:
            drift_task.cancel()
            if self.labels is not None:
                await self.labels.close()
            if log_task is not None:
                log_task.cancel()
                await asyncio.gather(log_task, return_exceptions=True)
            self.metrics.unwatch_gc()


# Request ids made here: a random prefix per process and a counter, unique without a syscall each.
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)


def _request_id(header: str | None) -> str:
    # Istio and most gateways send x-request-id; reuse it so logs line up.
    if header and len(header) <= MAX_REQUEST_ID:
        return header
    return f"{_ID_PREFIX}-{next(_ids):x}"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    hint = {404: "see serving/README.md for the endpoints", 405: "check the HTTP method"}
    return error_response(
        exc.status_code,
        f"{exc.detail.lower()}: {request.method} {request.url.path}; "
        f"{hint.get(exc.status_code, 'check the request')}",
    )


class ServingApp:
    """The ASGI app: `POST /predict` is answered on raw ASGI messages, everything else through Starlette.

    Starlette's routing, exception middleware, Request and Response objects cost about as much
    CPU as the rest of a prediction, so they are skipped where requests are most frequent.
    """

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.starlette = Starlette(
            routes=server.routes(), lifespan=server.lifespan, exception_handlers={HTTPException: _http_error}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
            await self._predict(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        started = perf_counter()
        content_type = request_id = length = encoding = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-encoding":
                encoding = value.decode("latin-1")
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        try:
            server.check_media_type(content_type, binary=False)
            body = server.decode_body(await server.receive_body(receive, length), encoding)
            rows = predict_rows(parse_json(body), server.checker)
            request_id = _request_id(request_id)
            result = await server.predict_once(rows, request_id)
            status, payload = 200, orjson.dumps(server.answer(rows, result, request_id), option=NUMPY)
        except Exception as exc:  # noqa: BLE001 — every failure becomes a JSON answer
            status, message = server.failure(exc, "POST /predict")
            payload = orjson.dumps({"error": message})
        server.metrics.request(status, perf_counter() - started if status == 200 else None)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(payload)),
                    *((k.encode(), v.encode()) for k, v in _error_headers(status).items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def create_app(server: ModelServer) -> ServingApp:
    return ServingApp(server)
