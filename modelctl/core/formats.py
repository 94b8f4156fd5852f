"""The artifact formats a version may be registered in: one table, read by the registry and the server.

Each format says what its file is called, how `modelctl register` reads the types its
artifact holds (reviewers approve them in the record's `artifact.trusted_types`), and how
a loaded model is checked against the model file's signature and output. The server pairs
each format with a runtime of the same name in `serving/formats/`; supporting a new format
is one entry here and one file there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelctl.core.errors import UserError


@dataclass(frozen=True)
class Incompatibility:
    """Why a loaded model cannot serve a model file's signature and output, and what to do."""

    problem: str
    fix: str


@dataclass(frozen=True)
class ArtifactFormat:
    """One registrable artifact format.

    Attributes
    ----------
    name : the record's `artifact.format`.
    file_name : the artifact's file name where it is fetched to (beside `profile.npz`).
    suffix : the file suffix `modelctl register` recognises the format by.
    stored_types : path -> the dotted names of the non-default types the artifact holds,
        sorted; they go into the record for review, and nothing else is loaded.
    check : (model, feature names, class names) -> the first incompatibility, or None.
    """

    name: str
    file_name: str
    suffix: str
    stored_types: Callable[[Path], list[str]]
    check: Callable[[Any, Sequence[str], Sequence[str]], Incompatibility | None]


def _skops_types(path: Path) -> list[str]:
    try:
        import skops.io
    except ImportError:
        raise UserError(str(path), "skops is not installed", "install modelctl[pipeline]") from None
    return sorted(skops.io.get_untrusted_types(file=path))


def check_classifier(model: Any, features: Sequence[str], classes: Sequence[str]) -> Incompatibility | None:
    """scikit-learn's estimator conventions: `predict_proba`, `n_features_in_`, `feature_names_in_`, `classes_`."""
    if not callable(getattr(model, "predict_proba", None)):
        return Incompatibility(f"a {type(model).__name__} has no predict_proba", "serve a classifier")
    width = getattr(model, "n_features_in_", len(features))
    if width != len(features):
        return Incompatibility(
            f"the model takes {width} features, the signature lists {len(features)}",
            "make the signature match the training features",
        )
    names = getattr(model, "feature_names_in_", None)
    if names is not None and list(names) != list(features):
        return Incompatibility(
            "the model's feature names or their order differ from the signature",
            f"list the signature's features as {list(names)}",
        )
    count = len(getattr(model, "classes_", ()))
    if count != len(classes):
        return Incompatibility(
            f"the model has {count} classes, the output lists {len(classes)}",
            "list one output class per model class, in the model's order",
        )
    return None


SKOPS = ArtifactFormat(
    name="skops",
    file_name="model.skops",
    suffix=".skops",
    stored_types=_skops_types,
    check=check_classifier,
)
FORMATS: dict[str, ArtifactFormat] = {f.name: f for f in (SKOPS,)}


def by_suffix(path: str) -> ArtifactFormat:
    """The format of an artifact path by its suffix; UserError for an unknown one."""
    suffix = Path(path).suffix
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    known = ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS.values())
    raise UserError(path, f"unknown artifact format {suffix!r}", f"save the model as one of {known}")
