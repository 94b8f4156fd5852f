"""One runtime per artifact format (the core's `modelctl.formats` table), behind one interface.

A runtime is made from the artifact's bytes after the shared loader has verified their
sha256: nothing format-specific ever sees unverified bytes. Supporting a new format is one
module here, registered in `RUNTIMES` under the core table's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from modelctl.core.servingspec import ServingSpec
from serving.formats import skops
from serving.loader import Matrix


class Runtime(Protocol):
    """A loaded model: probabilities of `output.classes`, in that order, for rows of the signature."""

    def predict_proba(self, rows: Matrix) -> Matrix:
        """(rows, features) float64 -> (rows, classes) float64 probabilities."""
        ...

    def metadata(self) -> dict[str, Any]:
        """What serves: `platform` (the OIP metadata's), `engine`, and parity details."""
        ...


# (verified bytes, spec, reference rows, parity tolerance) -> runtime; raises UserError.
RuntimeLoader = Callable[[bytes, ServingSpec, Matrix, float], Runtime]
RUNTIMES: dict[str, RuntimeLoader] = {"skops": skops.load}
