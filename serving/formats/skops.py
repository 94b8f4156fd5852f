"""The skops format: a scikit-learn estimator, built back trusting only the record's types,
then served by the compiled engine that matches it (serving/compiled.py)."""

from __future__ import annotations

from modelctl.core.formats import FORMATS
from modelctl.core.servingspec import ServingSpec
from serving.compiled import CompiledRuntime, compile_estimator
from serving.loader import Matrix, read_native

FORMAT = FORMATS["skops"]


def load(data: bytes, spec: ServingSpec, reference_rows: Matrix, tolerance: float) -> CompiledRuntime:
    """The estimator in `data` (already verified), checked against the spec and compiled."""
    estimator = read_native(FORMAT, data, spec).native
    engine = compile_estimator(estimator, reference_rows, tolerance)
    return CompiledRuntime("sklearn", engine, {"estimator": type(estimator).__name__})
