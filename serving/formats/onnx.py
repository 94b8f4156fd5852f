"""ONNX, served by onnxruntime on one thread where it equals ONNX's reference evaluator.

Both compute in float32 (the graph's arithmetic), but onnxruntime's MLAS kernels use other
instructions and summation orders than the reference evaluator's numpy, so their
probabilities differ in the last float32 bits. Measured: 1.19e-7, one float32 step at 1.0, on
churn v1.1.0's 514 reference rows (a scaled logistic regression); 8.0e-8 on 514 held-out rows
for bench/serving's 150-tree HistGradientBoosting converted by skl2onnx. The tolerance,
`FLOAT32_PARITY_TOLERANCE` (1e-6), allows about eight such steps; a graph whose engines
disagree by more is served by the reference evaluator, saying so.
"""

from __future__ import annotations

from modelctl.core.formats import FORMATS
from modelctl.core.formats.onnx import OnnxGraph, as_input
from modelctl.core.servingspec import ServingSpec
from serving.compiled import CompiledRuntime, Predictor, fastest
from serving.loader import Matrix, read_native

FORMAT = FORMATS["onnx"]


def load(data: bytes, spec: ServingSpec, reference_rows: Matrix, tolerance: float) -> CompiledRuntime:
    """The graph in `data` (already verified and checked), run by onnxruntime."""
    model = read_native(FORMAT, data, spec)
    engine = fastest(
        "onnx-reference",
        model.predict_proba,
        [("onnxruntime", lambda: session(model.native))],
        reference_rows,
        tolerance,
    )
    return CompiledRuntime("onnxruntime_onnx", engine)


def session(graph: OnnxGraph) -> Predictor:
    """An onnxruntime session on one thread, neither spinning nor logging below errors."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    runner = onnxruntime.InferenceSession(graph.data, options, providers=["CPUExecutionProvider"])

    def predict_proba(rows: Matrix) -> Matrix:
        [scores] = runner.run([graph.output], {graph.input: as_input(rows, graph)})
        return np.ascontiguousarray(scores, dtype=np.float64)

    return predict_proba
