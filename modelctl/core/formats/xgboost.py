"""XGBoost's own model file: UBJSON (or JSON), trees and numbers, never a pickle.

The format is XGBoost's documented model schema ("Introduction to Model IO" in XGBoost's
docs): `Booster.save_raw("ubj")` writes it, `Booster.load_model` reads either encoding.
XGBoost's UBJSON reader sizes its buffers from the counts it reads, so a truncated file can
make it allocate many gigabytes; the encoding is checked here first (UBJSON, ubjson.org Draft
12: every count and length fits in the bytes that follow, one value fills the file; JSON by
Python's parser).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelctl.core.errors import UserError
from modelctl.core.formats.base import (
    FIX_ARTIFACT,
    Incompatibility,
    Loaded,
    Matrix,
    class_columns,
    require,
    unreadable,
)

LIBRARY = "XGBoost"
# Objectives whose prediction is class probabilities: (rows,) for binary, (rows, classes) for softprob.
PROBABILITY_OBJECTIVES = ("binary:logistic", "multi:softprob")


def save(model: Any, path: Path) -> None:
    """An XGBClassifier's or a Booster's UBJSON: the model alone (no training data, no clock),
    so one fitted model is always the same bytes."""
    xgboost = require("xgboost", str(path))
    booster = model.get_booster() if isinstance(model, xgboost.XGBModel) else model
    if not isinstance(booster, xgboost.Booster):
        raise UserError(
            str(path),
            f"the xgboost format holds an XGBoost model, not a {type(model).__name__}",
            "train with algorithm xgboost, or name another artifact in params.yaml (modelctl/core/formats)",
        )
    path.write_bytes(bytes(booster.save_raw(raw_format="ubj")))


def load(data: bytes, trusted: Sequence[str], where: str) -> Loaded:
    """The Booster in `data`, predicting with one thread; its objective must give probabilities."""
    validate(data, where)
    xgboost = require("xgboost", where)
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgboost.core.XGBoostError as exc:
        raise unreadable(where, LIBRARY, exc) from None
    booster.set_param({"nthread": 1})
    objective = json.loads(booster.save_config())["learner"]["objective"]
    name = objective["name"]
    classes = (
        2
        if name == "binary:logistic"
        else int(objective.get("softmax_multiclass_param", {}).get("num_class", 0))
    )

    def predict_proba(rows: Matrix) -> Matrix:
        return class_columns(booster.inplace_predict(rows, validate_features=False))

    return Loaded(
        native=booster,
        predict_proba=predict_proba,
        features=booster.num_features(),
        feature_names=booster.feature_names,
        classes=classes,
        problem=None
        if name in PROBABILITY_OBJECTIVES
        else Incompatibility(
            f"its objective {name} predicts no class probabilities",
            f"train it with one of {', '.join(PROBABILITY_OBJECTIVES)}",
        ),
    )


def validate(data: bytes, where: str) -> None:
    """UserError unless `data` is one whole JSON or UBJSON value."""
    if data.lstrip()[:1] == b"{" and data.lstrip()[1:2].strip() in (b'"', b"}", b""):
        try:
            json.loads(data)
        except ValueError as exc:
            raise unreadable(where, LIBRARY, exc) from None
        return
    try:
        end = _ubjson_value(data, 0, 0)
    except _Malformed as exc:
        raise UserError(where, f"is not a complete {LIBRARY} UBJSON model ({exc})", FIX_ARTIFACT) from None
    if end != len(data):
        raise UserError(where, f"is not one {LIBRARY} UBJSON value (bytes follow it)", FIX_ARTIFACT)


class _Malformed(Exception):
    pass


# UBJSON value types of a fixed size, by marker; `[` and `{` are containers, S and H strings.
_SIZES = {
    b"Z": 0,
    b"N": 0,
    b"T": 0,
    b"F": 0,
    b"i": 1,
    b"U": 1,
    b"C": 1,
    b"I": 2,
    b"l": 4,
    b"d": 4,
    b"L": 8,
    b"D": 8,
}
_COUNTS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}
_DEPTH = 32  # XGBoost's models nest about 8 deep


def _take(data: bytes, position: int, size: int) -> int:
    if size < 0 or position + size > len(data):
        raise _Malformed(f"{size} bytes declared at byte {position}, {len(data) - position} left")
    return position + size


def _count(data: bytes, position: int) -> tuple[int, int]:
    """An integer (a length or a count) and the position after it."""
    marker = data[position : position + 1]
    if marker not in _COUNTS:
        raise _Malformed(f"byte {position} is not an integer marker")
    end = _take(data, position + 1, struct.calcsize(_COUNTS[marker]))
    return struct.unpack(_COUNTS[marker], data[position + 1 : end])[0], end


def _ubjson_value(data: bytes, position: int, depth: int, marker: bytes = b"") -> int:
    """The position after the value at `position` (whose type marker is `marker` when a typed
    container gave it)."""
    if not marker:
        marker, position = data[position : position + 1], _take(data, position, 1)
    if marker in _SIZES:
        return _take(data, position, _SIZES[marker])
    if marker in (b"S", b"H"):
        length, position = _count(data, position)
        return _take(data, position, length)
    if marker not in (b"[", b"{") or depth > _DEPTH:
        raise _Malformed(f"byte {position - 1} is not a UBJSON value")
    return _container(data, position, depth + 1, is_object=marker == b"{")


def _container(data: bytes, position: int, depth: int, *, is_object: bool) -> int:
    typed = b""
    if data[position : position + 1] == b"$":
        typed, position = data[position + 1 : position + 2], _take(data, position, 2)
    if data[position : position + 1] == b"#":
        count, position = _count(data, position + 1)
        if typed in _SIZES and not is_object:  # a typed array: count values of one fixed size
            return _take(data, position, count * _SIZES[typed])
        for _ in range(count):
            if is_object:
                length, position = _count(data, position)
                position = _take(data, position, length)
            position = _ubjson_value(data, position, depth, typed)
        return position
    if typed:
        raise _Malformed(f"a typed container at byte {position} has no count")
    close = b"}" if is_object else b"]"
    while data[position : position + 1] != close:
        if position >= len(data):
            raise _Malformed("the file ends inside a container")
        if is_object:
            length, position = _count(data, position)
            position = _take(data, position, length)
        position = _ubjson_value(data, position, depth)
    return position + 1
