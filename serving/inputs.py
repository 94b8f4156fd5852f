"""Turn request bodies into rows the model can take, or a 4xx that says what to fix.

Every check runs before a request joins a batch, so one bad request never fails others.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from modelctl.core.schema import Signature

Row = list[Any]
# Request ids are remembered for feedback, so their length is bounded.
MAX_REQUEST_ID = 128
# Without a signature bound, the largest finite float: comparisons also refuse NaN and Inf.
_LARGEST = sys.float_info.max


class ClientError(Exception):
    """A request the client must change; `kind` is its label in model_errors_total."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def invalid(message: str) -> ClientError:
    return ClientError(422, "invalid_input", message)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(
            400, "invalid_json", f"the body is not valid JSON ({exc}); send a JSON object"
        ) from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class _Feature:
    name: str
    type: str
    low: float
    high: float


class RowChecker:
    """Checks rows against the signature: count, JSON type and [min, max] of every value."""

    def __init__(self, signature: Signature, max_rows: int) -> None:
        self.names = signature.names
        self.width = len(self.names)
        self.max_rows = max_rows
        self._features = tuple(
            _Feature(
                f.name,
                f.type,
                -_LARGEST if f.min is None else f.min,
                _LARGEST if f.max is None else f.max,
            )
            for f in signature.features
        )
        # Bounds for the fast path; an empty range sends int and bool features to the full check.
        self._lows = tuple(f.low if f.type == "float" else math.inf for f in self._features)
        self._highs = tuple(f.high if f.type == "float" else -math.inf for f in self._features)

    def rows(self, value: Any, where: str) -> list[Row]:
        """`value` as a checked list of rows (a list of lists)."""
        if type(value) is not list or not value:
            raise invalid(f"{where} must be a non-empty list of rows, each a list of {self.width} values")
        if len(value) > self.max_rows:
            raise ClientError(
                413,
                "too_many_rows",
                f"{where} has {len(value)} rows, at most {self.max_rows} are allowed; split it",
            )
        for index, row in enumerate(value):
            self.check(row, f"{where}[{index}]")
        return value

    def check(self, row: Any, where: str) -> None:
        if type(row) is not list or len(row) != self.width:
            count = f"{len(row)} values" if type(row) is list else f"a {type(row).__name__}"
            raise invalid(f"{where} is {count}; send a list of {self.width} values: {', '.join(self.names)}")
        for value, feature in zip(row, self._features, strict=True):
            kind = type(value)
            # The common case first: a number of the right kind inside the range.
            if (
                (kind is float or kind is int)
                and feature.type == "float"
                and feature.low <= value <= feature.high
            ):
                continue
            self._check_value(value, feature, where)

    def _check_value(self, value: Any, feature: _Feature, where: str) -> None:
        at = f"{where} ({feature.name})"
        kind = type(value)
        if feature.type == "bool":
            if kind is bool or (kind is int and value in (0, 1)):
                return
            raise invalid(f"{at} is {_show(value)}; send true or false")
        if kind is bool or kind not in (int, float):
            raise invalid(f"{at} is {_show(value)}; send a number")
        if feature.type == "int" and kind is float and not value.is_integer():
            raise invalid(f"{at} is {_show(value)}; send a whole number")
        if not feature.low <= value <= feature.high:
            raise ClientError(
                422,
                "out_of_range",
                f"{at} is {_show(value)}, outside the signature's range [{feature.low:g}, {feature.high:g}]; "
                "send a value inside it",
            )


def predict_rows(body: Any, checker: RowChecker) -> tuple[list[Row], bool]:
    """The rows of a /predict body and whether it was the one-row form `{"features": [...]}`."""
    if type(body) is not dict or ("features" in body) == ("instances" in body):
        raise invalid('send a JSON object with either "features" (one row) or "instances" (a list of rows)')
    unknown = sorted(set(body) - {"features", "instances"})
    if unknown:
        # A misspelt or extra field must not be ignored silently (the request would mean something else).
        raise invalid(f'unknown key(s) {", ".join(map(repr, unknown))}; send only "features" or "instances"')
    if "features" in body:
        features = body["features"]
        checker.check(features, "features")
        return [features], True
    return checker.rows(body["instances"], "instances"), False


INFER_OUTPUTS = ("predict", "predict_proba")
_TENSOR_TYPES = frozenset(
    {"BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"}
)


@dataclass(frozen=True)
class InferRequest:
    """An Open Inference Protocol v2 request: one [rows, features] tensor in."""

    rows: list[Row]
    outputs: tuple[str, ...]
    id: str | None


def infer_request(body: Any, checker: RowChecker) -> InferRequest:
    if type(body) is not dict or type(body.get("inputs")) is not list or len(body["inputs"]) != 1:
        raise invalid(
            'send {"inputs": [{"name", "shape": [rows, features], "datatype", "data"}]} with one tensor'
        )
    tensor = body["inputs"][0]
    if type(tensor) is not dict:
        raise invalid("inputs[0] must be a tensor object with name, shape, datatype and data")
    request_id = body.get("id")
    if request_id is not None and (type(request_id) is not str or not 0 < len(request_id) <= MAX_REQUEST_ID):
        raise invalid(f"id must be a string of 1 to {MAX_REQUEST_ID} characters")
    return InferRequest(_tensor_rows(tensor, checker), _requested_outputs(body.get("outputs")), request_id)


def _tensor_rows(tensor: dict[str, Any], checker: RowChecker) -> list[Row]:
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if type(datatype) is not str or datatype not in _TENSOR_TYPES:
        raise invalid(
            f"inputs[0].datatype is {_show(datatype)}; use one of {', '.join(sorted(_TENSOR_TYPES))}"
        )
    if (
        type(shape) is not list
        or len(shape) != 2
        or not all(type(n) is int for n in shape)
        or shape[1] != checker.width
        or shape[0] < 1
    ):
        raise invalid(f"inputs[0].shape is {_show(shape)}; send [rows, {checker.width}]")
    if type(data) is not list:
        raise invalid("inputs[0].data must be a list, flat (row-major) or one list per row")
    count, width = shape
    if count > checker.max_rows:
        raise ClientError(
            413, "too_many_rows", f"inputs[0] has {count} rows, at most {checker.max_rows}; split it"
        )
    if len(data) == count * width and all(type(v) is not list for v in data[:width]):
        data = [data[i * width : (i + 1) * width] for i in range(count)]
    if len(data) != count:
        raise invalid(f"inputs[0].data does not hold shape {shape}; send {count} rows of {width} values")
    return checker.rows(data, "inputs[0].data")


def _requested_outputs(outputs: Any) -> tuple[str, ...]:
    if outputs is None:
        return INFER_OUTPUTS
    names = [o.get("name") if type(o) is dict else None for o in outputs] if type(outputs) is list else [None]
    known = tuple(name for name in names if name in INFER_OUTPUTS)
    if len(known) != len(names) or not known:
        unknown = next((name for name in names if name not in INFER_OUTPUTS), None)
        raise invalid(f"outputs name {_show(unknown)}; ask for {' and/or '.join(INFER_OUTPUTS)}")
    return known
