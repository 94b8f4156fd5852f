"""What one row of the format table holds, and what every format's loaded artifact offers.

A format module (`modelctl/core/formats/<name>.py`) saves a fitted model reproducibly and
reads verified bytes with the format's own library into a `Loaded`: the native library's
probabilities, which the pipeline evaluates and profiles, and which the server checks every
compiled engine against.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from modelctl.core.errors import UserError

Matrix = npt.NDArray[np.float64]
Predictor = Callable[[Matrix], Matrix]
# A file that is not what its record says: said by every format's loader, wherever it runs.
FIX_ARTIFACT = (
    "fetch it again ('modelctl fetch'), rebuild it ('dvc repro'), or correct the record's artifact.format"
)


@dataclass(frozen=True)
class Incompatibility:
    """Why a loaded model cannot serve a model file's signature and output, and what to do."""

    problem: str
    fix: str


@dataclass(frozen=True)
class Loaded:
    """An artifact read by its own library.

    Attributes
    ----------
    native : the library's object (a scikit-learn estimator, an XGBoost or LightGBM Booster,
        an `OnnxGraph`), for engines that compile it.
    predict_proba : (rows, features) float64 -> (rows, classes) float64, as the library computes them.
    features : how many features the model takes, when it says.
    feature_names : the names it was fitted with, when it keeps them.
    classes : how many class probabilities it returns, when it says.
    problem : what keeps it from being a classifier at all (checked before anything else).
    """

    native: Any
    predict_proba: Predictor
    features: int | None
    feature_names: list[str] | None
    classes: int | None
    problem: Incompatibility | None = None


@dataclass(frozen=True)
class ArtifactFormat:
    """One row of the format table (`modelctl.core.formats.FORMATS`).

    Attributes
    ----------
    name : the record's `artifact.format`, and the server's runtime of the same name.
    file_name : the artifact's file name: params.yaml's `artifact` and dvc.yaml's output name
        it, the registry tells the format by its suffix, and it is fetched under it.
    library : who writes and reads it, as messages name it.
    save : (fitted model, path) -> None; the same fitted model always gives the same bytes.
        UserError for a model this format cannot hold.
    load : (verified bytes, trusted types, where) -> Loaded; UserError, naming `where`, for
        bytes that are not this format.
    stored_types : verified bytes -> the dotted names of the code the artifact asks to run,
        sorted, for review; None for formats that hold no code.
    trust : why the record's `trusted_types` are what they are, as `register` says it.
    reproducible : how its bytes stay reproducible (the README's format table).
    served_by : how the server runs it (the README's format table).
    """

    name: str
    file_name: str
    library: str
    save: Callable[[Any, Path], None]
    load: Callable[[bytes, Sequence[str], str], Loaded]
    stored_types: Callable[[bytes], list[str]] | None
    trust: str
    reproducible: str
    served_by: str

    @property
    def suffix(self) -> str:
        return PurePath(self.file_name).suffix

    @property
    def holds_code(self) -> bool:
        return self.stored_types is not None

    def read(self, data: bytes, trusted: Sequence[str], where: str) -> Loaded:
        """`data` (already verified by digest) loaded by this format's library; UserError, one
        line naming `where`, for bytes that are not this format, before the library sees them
        where they would crash it or run code (an empty file, a pickle)."""
        found = sniff(data)
        if found:
            raise UserError(where, f"is {found}, not a model in the {self.name} format", FIX_ARTIFACT)
        return self.load(data, trusted, where)


def sniff(data: bytes) -> str:
    """What `data` visibly is when it is no model of any format here: "" otherwise."""
    if not data:
        return "an empty file"
    # Pickle protocols 2-5 open with PROTO (0x80) and the protocol number (pickletools).
    if len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "a Python pickle (loading one runs arbitrary code)"
    return ""


def unreadable(where: str, library: str, exc: BaseException) -> UserError:
    """The one line for bytes a library refused: the first line of its message, without the
    C++ libraries' timestamps and stack traces."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[0] if lines else type(exc).__name__
    if detail.startswith("[") and "] " in detail:  # XGBoost's "[12:00:00] src/file.cc:12: ..."
        detail = detail.split("] ", 1)[1]
    return UserError(where, f"is not a readable {library} model ({detail[:200]})", FIX_ARTIFACT)


def require(module: str, where: str) -> ModuleType:
    """Import a format's library; UserError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            where,
            f"reading it needs {module.split('.', maxsplit=1)[0]}, which is not installed",
            "install modelctl[serving] (to serve) or modelctl[pipeline] (to train and register)",
        ) from None


def class_columns(scores: npt.NDArray[Any]) -> Matrix:
    """A library's scores as (rows, classes) float64: a binary model's positive-class
    probabilities, (rows,) or (rows, 1), become [1 - p, p]."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim == 1 or values.shape[1] == 1:
        positive = values.reshape(-1)
        return np.column_stack((1.0 - positive, positive))
    return np.ascontiguousarray(values.reshape(len(values), -1))


def check(model: Loaded, features: Sequence[str], classes: Sequence[str]) -> Incompatibility | None:
    """The first way `model` cannot serve a signature of `features` and an output of `classes`."""
    if model.problem is not None:
        return model.problem
    if model.features is not None and model.features != len(features):
        return Incompatibility(
            f"the model takes {model.features} features, the signature lists {len(features)}",
            "make the signature match the training features",
        )
    if model.feature_names is not None and list(model.feature_names) != list(features):
        return Incompatibility(
            "the model's feature names or their order differ from the signature",
            f"list the signature's features as {list(model.feature_names)}",
        )
    if model.classes is not None and model.classes != len(classes):
        return Incompatibility(
            f"the model has {model.classes} classes, the output lists {len(classes)}",
            "list one output class per model class, in the model's order",
        )
    return None
