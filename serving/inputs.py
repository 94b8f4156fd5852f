"""Turn request bodies into rows the model can take, or a 4xx that says what to fix.

Every check runs before a request joins a batch, so one bad request never fails others.
Rows come positional (in the signature's order) or named (`{"amount": 12.5, ...}`, in any
order); values outside a feature's [min, max] are predicted and flagged, or refused when
the signature says `on_out_of_range: refuse`. Messages quote values as JSON spells them.
"""

from __future__ import annotations

import math
import operator
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelctl.core.schema import Signature

Row = list[Any]
# Request ids are remembered for feedback, so their length is bounded.
MAX_REQUEST_ID = 128
# Without a signature bound, the largest finite float: comparisons also refuse NaN and Inf.
_LARGEST = sys.float_info.max
NOT_FLAGGED: tuple[str, ...] = ()
# Per feature type, the value types the fast path takes without a closer look (a float for an
# int feature may be a fraction; an int for a bool may be 7).
_FAST_TYPES: dict[str, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({int}),
    "bool": frozenset({bool}),
}
_MAX_PATTERNS = 256  # type patterns remembered, so odd clients cannot grow the set


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


def show(value: Any) -> str:
    """`value` as JSON spells it (null, true, "text"), cut to 40 characters."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class _Feature:
    name: str
    type: str
    low: float
    high: float


@dataclass
class Rows:
    """Checked rows in the signature's order, and per row the features outside their range."""

    rows: list[Row]
    flagged: list[tuple[str, ...]] = field(default_factory=list)
    single: bool = False

    @property
    def any_flagged(self) -> bool:
        return any(self.flagged)


class RowChecker:
    """Checks rows against the signature: names or count, JSON type and [min, max] of every value."""

    def __init__(self, signature: Signature, max_rows: int) -> None:
        self.names = signature.names
        self.width = len(self.names)
        self.max_rows = max_rows
        self.refuse_out_of_range = signature.on_out_of_range == "refuse"
        self._known = frozenset(self.names)
        self._features = tuple(
            _Feature(
                f.name,
                f.type,
                -_LARGEST if f.min is None else f.min,
                _LARGEST if f.max is None else f.max,
            )
            for f in signature.features
        )
        # The fast path: a row whose value types are all of their feature's JSON type, and whose
        # values are all inside [low, high], is checked in three C-level passes.
        self._lows = tuple(f.low for f in self._features)
        self._highs = tuple(f.high for f in self._features)
        self._accepted = tuple(_FAST_TYPES[f.type] for f in self._features)
        self._fast_types: set[tuple[type, ...]] = set()

    def rows(self, value: Any, where: str) -> Rows:
        """`value` (a list of rows, each a list or an object of named values) as checked rows."""
        if type(value) is not list or not value:
            raise invalid(
                f"{where} must be a non-empty list of rows, each a list of {self.width} values "
                "or an object naming them"
            )
        self.check_count(len(value), where)
        checked = Rows([])
        for index, row in enumerate(value):
            at = f"{where}[{index}]"
            ordered = self.named(row, at) if type(row) is dict else row
            checked.flagged.append(self.check(ordered, at))
            checked.rows.append(ordered)
        return checked

    def one(self, row: Any, where: str) -> Rows:
        ordered = self.named(row, where) if type(row) is dict else row
        return Rows([ordered], [self.check(ordered, where)], single=True)

    def check_count(self, count: int, where: str) -> None:
        if count > self.max_rows:
            raise ClientError(
                413,
                "too_many_rows",
                f"{where} has {count} rows, at most {self.max_rows} are allowed; split it",
            )

    def named(self, row: dict[str, Any], where: str) -> Row:
        """A row of named values in the signature's order; 422 naming missing and unknown names."""
        try:
            ordered = [row[name] for name in self.names]
        except KeyError:
            ordered = None
        if ordered is None or len(row) != self.width:
            missing = [name for name in self.names if name not in row]
            unknown = [name for name in row if name not in self._known]
            problems = [
                f"{label} {show(names)}"
                for label, names in (("missing", missing), ("unknown", unknown))
                if names
            ]
            raise invalid(f"{where} has {' and '.join(problems)} features; send exactly {show(self.names)}")
        return ordered

    def check(self, row: Any, where: str) -> tuple[str, ...]:
        """Check one positional row; the names of its features outside their range (if flagged)."""
        if type(row) is not list or len(row) != self.width:
            count = f"{len(row)} values" if type(row) is list else f"a {type(row).__name__}"
            raise invalid(f"{where} is {count}; send a list of {self.width} values: {', '.join(self.names)}")
        if (
            self._fast_kinds(tuple(map(type, row)))
            and all(map(operator.le, self._lows, row))
            and all(map(operator.le, row, self._highs))
        ):
            return NOT_FLAGGED
        flagged: list[str] | None = None
        for value, feature in zip(row, self._features, strict=True):
            kind = type(value)
            # The common case first: a number of the right kind inside the range.
            if (
                (kind is float or kind is int)
                and feature.type == "float"
                and feature.low <= value <= feature.high
            ):
                continue
            if not self._check_value(value, feature, where):
                flagged = [*(flagged or ()), feature.name]
        return NOT_FLAGGED if flagged is None else tuple(flagged)

    def _fast_kinds(self, kinds: tuple[type, ...]) -> bool:
        """Whether every value's type is one its feature takes as is (remembered per pattern)."""
        if kinds in self._fast_types:
            return True
        if not all(kind in accepted for kind, accepted in zip(kinds, self._accepted, strict=True)):
            return False
        if len(self._fast_types) < _MAX_PATTERNS:
            self._fast_types.add(kinds)
        return True

    def _check_value(self, value: Any, feature: _Feature, where: str) -> bool:
        """Whether the value is inside its range; raises for values of the wrong type."""
        at = f"{where} ({feature.name})"
        kind = type(value)
        if feature.type == "bool":
            # Numeric clients (numpy arrays, OIP FP64 tensors) send a bool as 0.0 or 1.0.
            if kind is bool or (kind in (int, float) and value in (0, 1)):
                return True
            raise invalid(f"{at} is {show(value)}; send true or false (or 0 or 1)")
        if kind is bool or kind not in (int, float):
            raise invalid(f"{at} is {show(value)}; send a number")
        if not math.isfinite(value):
            raise invalid(f"{at} is {show(value)}; send a finite number")
        if feature.type == "int" and kind is float and not value.is_integer():
            raise invalid(f"{at} is {show(value)}; send a whole number")
        if feature.low <= value <= feature.high:
            return True
        if self.refuse_out_of_range:
            raise ClientError(
                422,
                "out_of_range",
                f"{at} is {show(value)}, outside the signature's range [{feature.low:g}, {feature.high:g}]; "
                "send a value inside it",
            )
        return False


def predict_rows(body: Any, checker: RowChecker) -> Rows:
    """The rows of a /predict body: `{"features": row}` (one) or `{"instances": [rows]}`."""
    if type(body) is dict and len(body) == 1 and "features" in body:  # the common case, first
        return checker.one(body["features"], "features")
    if type(body) is not dict or ("features" in body) == ("instances" in body):
        raise invalid('send a JSON object with either "features" (one row) or "instances" (a list of rows)')
    unknown = sorted(set(body) - {"features", "instances"})
    if unknown:
        # A misspelt or extra field must not be ignored silently (the request would mean something else).
        raise invalid(f'unknown key(s) {", ".join(map(repr, unknown))}; send only "features" or "instances"')
    if "features" in body:
        return checker.one(body["features"], "features")
    return checker.rows(body["instances"], "instances")


MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")


def mlflow_rows(body: Any, checker: RowChecker) -> Rows:
    """The rows of an MLflow scoring-server body (`/invocations`).

    MLflow's documented JSON forms: `dataframe_split` ({"columns": [...], "data": [[...]]}),
    `dataframe_records` ([{column: value}, ...]), `instances` and `inputs` (a list of rows, or
    an object of named columns). Columns are matched by name; their order never matters.
    """
    keys = [key for key in MLFLOW_FORMATS if type(body) is dict and key in body]
    if len(keys) != 1 or len(body) != 1:
        raise invalid(f"send a JSON object with exactly one of {show(list(MLFLOW_FORMATS))}")
    key = keys[0]
    value = body[key]
    if key == "dataframe_split":
        return checker.rows(_split_records(value, checker), key)
    if type(value) is dict:  # a tensor per column: {"amount": [...], ...}
        return checker.rows(_column_records(value, key, checker), key)
    return checker.rows(value, key)


def _split_records(value: Any, checker: RowChecker) -> list[Any]:
    shape = 'dataframe_split must be {"columns": [names], "data": [[values], ...]}'
    if (
        type(value) is not dict
        or type(value.get("columns")) is not list
        or type(value.get("data")) is not list
    ):
        raise invalid(shape)
    columns = value["columns"]
    if not all(type(name) is str for name in columns) or len(set(columns)) != len(columns):
        raise invalid(f"dataframe_split.columns must be distinct feature names; {shape}")
    checker.check_count(len(value["data"]), "dataframe_split.data")
    records = []
    for index, row in enumerate(value["data"]):
        if type(row) is not list or len(row) != len(columns):
            raise invalid(
                f"dataframe_split.data[{index}] must be a list of {len(columns)} values, one per column"
            )
        records.append(dict(zip(columns, row, strict=True)))
    return records


def _column_records(columns: dict[str, Any], where: str, checker: RowChecker) -> list[Any]:
    lengths = {len(v) if type(v) is list else -1 for v in columns.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise invalid(f"{where} as an object must map each feature name to a list of values of one length")
    count = lengths.pop()
    checker.check_count(count, where)
    return [{name: values[i] for name, values in columns.items()} for i in range(count)]


INFER_OUTPUTS = ("predict", "predict_proba")
# The Open Inference Protocol's numeric datatypes, as little-endian numpy types for binary data.
TENSOR_TYPES = {
    "BOOL": "?", "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip


@dataclass(frozen=True)
class InferRequest:
    """An Open Inference Protocol request: one [rows, features] tensor in, outputs wanted (as binary?)."""

    rows: Rows
    outputs: tuple[tuple[str, bool], ...]
    id: str | None


def infer_request(body: Any, checker: RowChecker, binary: bytes = b"") -> InferRequest:
    """The request in `body` (the JSON header), its binary tensor data after it in `binary`.

    Binary data follows the binary tensor data extension: raw little-endian, row-major tensor
    bytes after the JSON, `parameters.binary_data_size` saying how many belong to the input.
    """
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
    parameters = body.get("parameters")
    all_binary = type(parameters) is dict and parameters.get("binary_data_output") is True
    return InferRequest(
        _tensor_rows(tensor, checker, binary),
        _requested_outputs(body.get("outputs"), all_binary),
        request_id,
    )


def _tensor_rows(tensor: dict[str, Any], checker: RowChecker, binary: bytes) -> Rows:
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if type(datatype) is not str or datatype not in TENSOR_TYPES:
        raise invalid(f"inputs[0].datatype is {show(datatype)}; use one of {', '.join(TENSOR_TYPES)}")
    if (
        type(shape) is not list
        or len(shape) != 2
        or not all(type(n) is int for n in shape)
        or shape[1] != checker.width
        or shape[0] < 1
    ):
        raise invalid(f"inputs[0].shape is {show(shape)}; send [rows, {checker.width}]")
    count, width = shape
    checker.check_count(count, "inputs[0]")
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if type(parameters) is dict else None
    if size is not None or binary:
        return checker.rows(_binary_rows(binary, size, datatype, shape), "inputs[0]")
    data = tensor.get("data")
    if type(data) is not list:
        raise invalid("inputs[0].data must be a list, flat (row-major) or one list per row")
    if len(data) == count * width and all(type(v) is not list for v in data[:width]):
        data = [data[i * width : (i + 1) * width] for i in range(count)]
    if len(data) != count:
        raise invalid(f"inputs[0].data does not hold shape {shape}; send {count} rows of {width} values")
    return checker.rows(data, "inputs[0].data")


def _binary_rows(binary: bytes, size: Any, datatype: str, shape: list[int]) -> list[Row]:
    dtype = np.dtype(TENSOR_TYPES[datatype])
    expected = shape[0] * shape[1] * dtype.itemsize
    if size != expected or len(binary) != expected:
        raise invalid(
            f"inputs[0] of shape {shape} and datatype {datatype} takes {expected} bytes of binary data; "
            f"parameters.binary_data_size is {show(size)} and {len(binary)} bytes follow the JSON"
        )
    values = np.frombuffer(binary, dtype=dtype).reshape(shape)
    if dtype.kind == "f":  # FP16 and FP32 widen exactly; each value is then checked as a float
        values = values.astype(np.float64)
    rows: list[Row] = values.tolist()
    return rows


def _requested_outputs(outputs: Any, all_binary: bool) -> tuple[tuple[str, bool], ...]:
    if outputs is None:
        return tuple((name, all_binary) for name in INFER_OUTPUTS)
    if type(outputs) is not list or not outputs or not all(type(o) is dict for o in outputs):
        raise invalid(f'outputs must be a list of {{"name": ...}}; ask for {" and/or ".join(INFER_OUTPUTS)}')
    wanted = []
    for output in outputs:
        name = output.get("name")
        if name not in INFER_OUTPUTS:
            raise invalid(f"outputs name {show(name)}; ask for {' and/or '.join(INFER_OUTPUTS)}")
        parameters = output.get("parameters")
        binary = type(parameters) is dict and parameters.get("binary_data") is True
        wanted.append((name, binary or all_binary))
    return tuple(wanted)
