"""The skops format: a scikit-learn estimator, deserialized trusting only the record's types,
then served by the compiled engine that matches it (serving/compiled.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import skops.io
from skops.io.exceptions import UntrustedTypesFoundException

from modelctl.core.errors import UserError
from modelctl.core.formats import FORMATS
from modelctl.core.servingspec import ServingSpec
from serving.compiled import Engine, compile_estimator
from serving.loader import FIX_RECORD, Matrix

FORMAT = FORMATS["skops"]


@dataclass(frozen=True)
class SkopsRuntime:
    estimator: Any
    engine: Engine

    def predict_proba(self, rows: Matrix) -> Matrix:
        return self.engine.predict_proba(rows)

    def metadata(self) -> dict[str, Any]:
        return {
            "platform": "sklearn",
            "engine": self.engine.name,
            "estimator": type(self.estimator).__name__,
            "parity_error": self.engine.parity_error,
            "fallback_from": self.engine.fallback_from or None,
            "reason": self.engine.reason or None,
        }


def load(data: bytes, spec: ServingSpec, reference_rows: Matrix, tolerance: float) -> SkopsRuntime:
    """The estimator in `data` (already verified), checked against the spec and compiled."""
    estimator = _deserialize(data, spec)
    problem = FORMAT.check(estimator, spec.signature.names, spec.output.classes)
    if problem is not None:
        raise UserError(spec.artifact_path, problem.problem, problem.fix)
    return SkopsRuntime(estimator, compile_estimator(estimator, reference_rows, tolerance))


def _deserialize(data: bytes, spec: ServingSpec) -> Any:
    try:
        return skops.io.loads(data, trusted=list(spec.trusted_types))
    except UntrustedTypesFoundException:
        untrusted = sorted(set(skops.io.get_untrusted_types(data=data)) - set(spec.trusted_types))
        raise UserError(
            spec.artifact_path,
            f"the artifact holds types the registry record does not trust: {', '.join(untrusted)}",
            "review them and list them in the version's artifact.trusted_types",
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError, ImportError, OSError) as exc:
        raise UserError(
            spec.artifact_path,
            f"the artifact is not a loadable skops file ({type(exc).__name__}: {exc})",
            FIX_RECORD,
        ) from None
