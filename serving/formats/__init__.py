"""One runtime per artifact format (the core's `modelctl.formats` table), behind one interface.

A runtime is made from the artifact's bytes after the shared loader has verified their
sha256: nothing format-specific ever sees unverified bytes. Supporting a new format is one
module here, registered in `RUNTIMES` under the core table's name (see the README's
"Add a format").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from modelctl.core.servingspec import ServingSpec
from serving.formats import lightgbm, onnx, skops, xgboost
from serving.loader import Matrix
from serving.options import FLOAT32_PARITY_TOLERANCE, PARITY_TOLERANCE


class Runtime(Protocol):
    """A loaded model: probabilities of `output.classes`, in that order, for rows of the signature."""

    def predict_proba(self, rows: Matrix) -> Matrix:
        """(rows, features) float64 -> (rows, classes) float64 probabilities."""
        ...

    def metadata(self) -> dict[str, Any]:
        """What serves: `platform` (the OIP metadata's), `engine`, and parity details."""
        ...


@dataclass(frozen=True)
class RuntimeFormat:
    """How the server runs one format: `load` (verified bytes, spec, reference rows, parity
    tolerance) -> runtime, raising UserError; `tolerance`, the parity tolerance it gets
    unless the server is told another."""

    load: Callable[[bytes, ServingSpec, Matrix, float], Runtime]
    tolerance: float


RUNTIMES: dict[str, RuntimeFormat] = {
    "skops": RuntimeFormat(skops.load, PARITY_TOLERANCE),
    "xgboost": RuntimeFormat(xgboost.load, PARITY_TOLERANCE),
    "lightgbm": RuntimeFormat(lightgbm.load, PARITY_TOLERANCE),
    "onnx": RuntimeFormat(onnx.load, FLOAT32_PARITY_TOLERANCE),
}
