"""Load the served version: verify each file's sha256 before anything parses it, then
deserialize with skops trusting only the types listed in the reviewed registry record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import skops.io
from skops.io.exceptions import UntrustedTypesFoundException

from modelctl.core.errors import UserError
from modelctl.core.servingspec import ServingSpec

Matrix = npt.NDArray[np.float64]
FIX_RECORD = "fetch it again with 'modelctl fetch' or check the registry record"


def read_verified(path: str, sha256: str, what: str) -> bytes:
    """The file's bytes, read once, only if they hash to `sha256`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(path, f"cannot read the {what}: {exc.strerror}", FIX_RECORD) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise UserError(
            path,
            f"{what} sha256 is {actual}, the registry record says {sha256}; refusing to load it",
            FIX_RECORD,
        )
    return data


@dataclass(frozen=True)
class LoadedModel:
    """A verified estimator whose class order matches the signature's output classes."""

    estimator: Any
    classes: tuple[str, ...]
    positive_index: int

    def predict_proba(self, rows: Matrix) -> Matrix:
        proba: Matrix = self.estimator.predict_proba(rows)
        return proba


def load_model(spec: ServingSpec) -> LoadedModel:
    if spec.format != "skops":
        raise UserError(
            spec.artifact_path,
            f"format {spec.format!r} is not served by this server",
            "register the model saved with skops",
        )
    data = read_verified(spec.artifact_path, spec.sha256, "artifact")
    estimator = _deserialize(data, spec)
    _check_compatible(estimator, spec)
    model = LoadedModel(
        estimator=estimator,
        classes=tuple(spec.output.classes),
        positive_index=spec.output.classes.index(spec.output.positive_class),
    )
    _warm_up(model, spec)
    return model


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


def _check_compatible(estimator: Any, spec: ServingSpec) -> None:
    where = spec.artifact_path
    if not callable(getattr(estimator, "predict_proba", None)):
        raise UserError(where, f"a {type(estimator).__name__} has no predict_proba", "serve a classifier")
    width = len(spec.signature.features)
    if getattr(estimator, "n_features_in_", width) != width:
        raise UserError(
            where,
            f"the model takes {estimator.n_features_in_} features, the signature lists {width}",
            "make the signature match the training features",
        )
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and list(names) != spec.signature.names:
        raise UserError(
            where,
            "the model's feature names or their order differ from the signature",
            f"list the signature's features as {list(names)}",
        )
    n_classes = len(getattr(estimator, "classes_", ()))
    if n_classes != len(spec.output.classes):
        raise UserError(
            where,
            f"the model has {n_classes} classes, the output lists {len(spec.output.classes)}",
            "list one output class per model class, in the model's order",
        )


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
