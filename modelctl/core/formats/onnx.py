"""ONNX: a graph of standard operators, converted from a trained model by its converter.

The pipeline converts scikit-learn models with skl2onnx (class probabilities as a plain
tensor, `zipmap: False`, at the pinned opsets below); a model converted elsewhere (onnxmltools,
a framework's exporter) is saved as it is. The native implementation is the ONNX
specification's own reference evaluator (`onnx.reference`): numpy operations, so under the
pipeline's pinned kernels its float32 results are the same on every machine, unlike
onnxruntime's CPU-dispatched kernels, which the server runs once checked against it.

Served graphs take one float input [rows, features] and give the class probabilities as a
float tensor [rows, classes] (the output named `probabilities`, else the only such one).
Tensors stored outside the file (ONNX external data) are refused: only verified bytes are read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelctl.core.errors import UserError
from modelctl.core.formats.base import Incompatibility, Loaded, Matrix, require, unreadable

LIBRARY = "ONNX"
INPUT = "input"
PROBABILITIES = "probabilities"
# The opsets conversions target: pinned, so a newer converter does not change the graph's bytes;
# onnxruntime has run them since 1.14 (Triton's and KServe's images included).
OPSETS = {"": 18, "ai.onnx.ml": 3}
# ONNX TensorProto element types a served input may have, and their numpy types.
INPUT_TYPES: dict[int, type[np.floating[Any]]] = {1: np.float32, 11: np.float64}


@dataclass(frozen=True)
class OnnxGraph:
    """A checked ONNX model: its bytes, the input to feed and the probabilities output to read."""

    data: bytes
    input: str
    input_type: type[np.floating[Any]]
    output: str


def save(model: Any, path: Path) -> None:
    """An ONNX model as it is, or a scikit-learn model converted by skl2onnx (float32 input
    named `input`, probabilities as a tensor), serialized deterministically."""
    onnx = require("onnx", str(path))
    if not isinstance(model, onnx.ModelProto):
        model = _convert(model, path)
    path.write_bytes(model.SerializeToString(deterministic=True))


def _convert(model: Any, path: Path) -> Any:
    skl2onnx = require("skl2onnx", str(path))
    from skl2onnx.common.data_types import FloatTensorType

    features = getattr(model, "n_features_in_", None)
    try:
        return skl2onnx.to_onnx(
            model,
            initial_types=[(INPUT, FloatTensorType([None, features]))],
            options={"zipmap": False},
            target_opset=OPSETS,
        )
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        raise UserError(
            str(path),
            f"skl2onnx cannot convert a {type(model).__name__} ({str(exc).splitlines()[0][:160]})",
            "convert it with its framework's converter and save the ModelProto, or name another artifact",
        ) from None


def load(data: bytes, trusted: Sequence[str], where: str) -> Loaded:
    """The model in `data`, checked by ONNX's checker, predicting with the reference evaluator."""
    onnx = require("onnx", where)
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import uses_external_data

    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except (DecodeError, onnx.checker.ValidationError, ValueError) as exc:
        raise unreadable(where, LIBRARY, exc) from None
    if any(uses_external_data(tensor) for tensor in _tensors(proto.graph)):
        raise UserError(
            where,
            "the ONNX model keeps tensors in external files, which are not verified",
            "save it with its tensors inside the model file",
        )
    graph, problem = _graph(proto, data)
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(proto)

    def predict_proba(rows: Matrix) -> Matrix:
        [scores] = evaluator.run([graph.output], {graph.input: as_input(rows, graph)})
        return np.ascontiguousarray(scores, dtype=np.float64)

    return Loaded(
        native=graph,
        predict_proba=predict_proba,
        features=_dimension(proto.graph.input, graph.input),
        feature_names=None,
        classes=_dimension(proto.graph.output, graph.output),
        problem=problem,
    )


def _graph(proto: Any, data: bytes) -> tuple[OnnxGraph, Incompatibility | None]:
    """Which input to feed and which output holds probabilities, or why the graph has none."""
    initialized = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initialized]
    outputs = [
        value.name
        for value in proto.graph.output
        if value.type.tensor_type.elem_type in INPUT_TYPES and len(value.type.tensor_type.shape.dim) == 2
    ]
    output = PROBABILITIES if PROBABILITIES in outputs else (outputs[0] if len(outputs) == 1 else "")
    element = inputs[0].type.tensor_type.elem_type if len(inputs) == 1 else 0
    graph = OnnxGraph(data, inputs[0].name if inputs else "", INPUT_TYPES.get(element, np.float32), output)
    if len(inputs) != 1 or element not in INPUT_TYPES:
        return graph, Incompatibility(
            "the graph does not take exactly one float tensor input [rows, features]",
            "export it with a single float input holding the signature's features",
        )
    if not output:
        return graph, Incompatibility(
            "the graph has no float [rows, classes] output of probabilities",
            f"export the probabilities as a tensor output named {PROBABILITIES!r} (skl2onnx: zipmap False)",
        )
    return graph, None


def _dimension(values: Any, name: str) -> int | None:
    """The second dimension of the named graph input or output, when the graph fixes it."""
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if value.name == name and len(dims) == 2 and dims[1].HasField("dim_value"):
            return int(dims[1].dim_value)
    return None


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: initializers and attribute values, in subgraphs too."""
    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _tensors(sub)


def as_input(rows: Matrix, graph: OnnxGraph) -> npt.NDArray[np.floating[Any]]:
    """Rows as the graph's input type (float32 for converted scikit-learn models)."""
    return np.ascontiguousarray(rows, dtype=graph.input_type)
