"""Load the served version: verified bytes, the runtime of its format, a warm-up prediction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelctl.core.errors import UserError
from modelctl.core.servingspec import ServingSpec
from serving.formats import RUNTIMES, Runtime
from serving.loader import FIX_RECORD, Matrix, read_verified


@dataclass(frozen=True)
class LoadedModel:
    """A verified model whose probabilities come in the order of the signature's output classes."""

    runtime: Runtime
    classes: tuple[str, ...]
    positive_index: int

    def predict_proba(self, rows: Matrix) -> Matrix:
        return self.runtime.predict_proba(rows)

    def metadata(self) -> dict[str, Any]:
        return self.runtime.metadata()


def load_model(spec: ServingSpec, reference_rows: Matrix, tolerance: float | None = None) -> LoadedModel:
    """The model of `spec`, its artifact verified first; UserError on any problem.

    `reference_rows` (rows, features) are what a compiled engine is checked on: it serves only
    if its probabilities are within `tolerance` of the format's native library (default: the
    format's own, `serving.formats.RUNTIMES`).
    """
    runtime = RUNTIMES.get(spec.format)
    if runtime is None:
        raise UserError(
            spec.artifact_path,
            f"format {spec.format!r} is not served by this server",
            f"register the model in one of: {', '.join(RUNTIMES)}",
        )
    data = read_verified(spec.artifact_path, spec.sha256, "artifact")
    model = LoadedModel(
        runtime=runtime.load(
            data, spec, reference_rows, runtime.tolerance if tolerance is None else tolerance
        ),
        classes=tuple(spec.output.classes),
        positive_index=spec.output.classes.index(spec.output.positive_class),
    )
    _warm_up(model, spec)
    return model


def _warm_up(model: LoadedModel, spec: ServingSpec) -> None:
    """One prediction on a row inside the signature, so 'ready' means 'can predict'."""
    row = [_inside(f.min, f.max) for f in spec.signature.features]
    try:
        proba = model.predict_proba(np.array([row], dtype=np.float64))
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(spec.artifact_path, f"the warm-up prediction failed ({exc})", FIX_RECORD) from None
    if proba.shape != (1, len(model.classes)):
        raise UserError(
            spec.artifact_path,
            f"predict_proba returned shape {proba.shape}, expected (1, {len(model.classes)})",
            "serve a classifier whose classes match the output",
        )


def _inside(low: float | None, high: float | None) -> float:
    if low is not None and high is not None:
        return (low + high) / 2
    return low if low is not None else (high if high is not None else 0.0)
