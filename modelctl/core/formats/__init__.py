"""The artifact formats a version may be registered in: one table, read by the pipeline, the
registry and the server.

Each row says what the artifact's file is called, how a fitted model is saved to it so that
its bytes are reproducible, how its own library reads it back (`Loaded`: the probabilities
every compiled engine is checked against), what code it may ask to run (reviewed in the
record's `artifact.trusted_types`), and how the server runs it. The pipeline saves and loads
through the row its params.yaml `artifact` names; the server pairs each row with the runtime
of the same name in `serving/formats/`. Supporting a new format is a row here, its module
beside this one, and its runtime there.
"""

from __future__ import annotations

from pathlib import Path

from modelctl.core.errors import UserError
from modelctl.core.formats import lightgbm, onnx, skops, xgboost
from modelctl.core.formats.base import (
    FIX_ARTIFACT,
    ArtifactFormat,
    Incompatibility,
    Loaded,
    Matrix,
    Predictor,
    check,
)

__all__ = [
    "FIX_ARTIFACT",
    "FORMATS",
    "ArtifactFormat",
    "Incompatibility",
    "Loaded",
    "Matrix",
    "Predictor",
    "by_suffix",
    "check",
]

NO_CODE = "nothing in it is code, so there are no types to trust"
FORMATS: dict[str, ArtifactFormat] = {
    f.name: f
    for f in (
        ArtifactFormat(
            name="skops",
            file_name="model.skops",
            library="skops",
            save=skops.save,
            load=skops.load,
            stored_types=skops.stored_types,
            trust="skops builds only its default types and the record's, each allowed by models/trusted-types.yaml",
            reproducible="skops' object ids renumbered in order, zip entries sorted with a fixed date",
            served_by="treelite's GTIL (tree ensembles) or one matrix product (logistic regression), "
            "else scikit-learn",
        ),
        ArtifactFormat(
            name="xgboost",
            file_name="model.ubj",
            library="XGBoost",
            save=xgboost.save,
            load=xgboost.load,
            stored_types=None,
            trust=f"XGBoost's UBJSON holds trees and numbers: {NO_CODE}",
            reproducible="`hist` trees grown on one thread with a fixed seed; UBJSON holds no clock",
            served_by="treelite's GTIL, else XGBoost",
        ),
        ArtifactFormat(
            name="lightgbm",
            file_name="model.txt",
            library="LightGBM",
            save=lightgbm.save,
            load=lightgbm.load,
            stored_types=None,
            trust=f"LightGBM's text model holds trees and numbers: {NO_CODE}",
            reproducible="`deterministic`, `force_row_wise`, one thread and a fixed seed; the text holds no clock",
            served_by="treelite's GTIL, else LightGBM",
        ),
        ArtifactFormat(
            name="onnx",
            file_name="model.onnx",
            library="ONNX",
            save=onnx.save,
            load=onnx.load,
            stored_types=None,
            trust=f"an ONNX graph holds standard operators and tensors: {NO_CODE}",
            reproducible="converter at pinned opsets, protobuf serialized deterministically; "
            "the reference evaluator's float32 numpy under the pinned kernels",
            served_by="onnxruntime on one thread, else ONNX's reference evaluator",
        ),
    )
}


def by_suffix(path: str) -> ArtifactFormat:
    """The format of an artifact path by its suffix; UserError for an unknown one."""
    suffix = Path(path).suffix
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    known = ", ".join(f"{f.file_name} ({f.name})" for f in FORMATS.values())
    raise UserError(path, f"unknown artifact format {suffix!r}", f"name the artifact one of {known}")
