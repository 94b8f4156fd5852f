"""LightGBM's text model: `Booster.model_to_string()`, read back by `Booster(model_str=...)`.

LightGBM's parser trusts its input: it finds tree i at the offset `tree_sizes` gives, without
bounds, and a malformed tree ends the process (`Log::Fatal` inside an OpenMP loop calls
std::terminate; src/boosting/gbdt_model_text.cpp, src/io/tree.cpp). So the text is checked
here first, against the layout LightGBM writes: the header keys it requires, every tree block
where `tree_sizes` says with the fields and lengths its parser reads, child and feature indices
in range, "end of trees" after the last block, and the parameters after it whole. A truncated
or foreign file is one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelctl.core.errors import UserError
from modelctl.core.formats.base import (
    FIX_ARTIFACT,
    Incompatibility,
    Loaded,
    Matrix,
    class_columns,
    require,
    unreadable,
)

LIBRARY = "LightGBM"
HEADER_KEYS = ("num_class", "label_index", "max_feature_idx", "feature_names", "feature_infos", "objective")
# Objectives whose prediction is class probabilities (LightGBM's docs, "objective").
PROBABILITY_OBJECTIVES = ("binary", "multiclass", "multiclassova")
# Array fields of a tree with n leaves: (name, length) for n > 1 (tree.cpp reads these counts).
SPLIT_FIELDS = ("split_feature", "threshold", "left_child", "right_child")
PARAMETER = re.compile(r"\[\w+: [^\n]*\]")


def save(model: Any, path: Path) -> None:
    """An LGBMClassifier's or a Booster's text model; with `deterministic`, one thread and a
    seed, the same data and params give the same text."""
    lightgbm = require("lightgbm", str(path))
    booster = model.booster_ if isinstance(model, lightgbm.LGBMModel) else model
    if not isinstance(booster, lightgbm.Booster):
        raise UserError(
            str(path),
            f"the lightgbm format holds a LightGBM model, not a {type(model).__name__}",
            "train with algorithm lightgbm, or name another artifact in params.yaml (modelctl/core/formats)",
        )
    path.write_bytes(booster.model_to_string().encode("utf-8"))


def load(data: bytes, trusted: Sequence[str], where: str) -> Loaded:
    """The Booster in `data` (its text checked first), predicting with one thread."""
    header = validate(data, where)
    lightgbm = require("lightgbm", where)
    try:
        booster = lightgbm.Booster(model_str=data.decode("utf-8"))
    except (lightgbm.basic.LightGBMError, ValueError) as exc:  # ValueError: its pandas_categorical line
        raise unreadable(where, LIBRARY, exc) from None
    objective = header["objective"].split()[0]
    names = header["feature_names"].split()
    default_names = names == [f"Column_{i}" for i in range(len(names))]

    def predict_proba(rows: Matrix) -> Matrix:
        return class_columns(booster.predict(rows, num_threads=1))

    return Loaded(
        native=booster,
        predict_proba=predict_proba,
        features=len(names),
        feature_names=None if default_names else names,
        classes=2 if objective == "binary" else int(header["num_class"]),
        problem=None
        if objective in PROBABILITY_OBJECTIVES
        else Incompatibility(
            f"its objective {objective} predicts no class probabilities",
            f"train it with one of {', '.join(PROBABILITY_OBJECTIVES)}",
        ),
    )


def validate(data: bytes, where: str) -> dict[str, str]:
    """The header of a LightGBM text model laid out as LightGBM writes it; UserError otherwise."""

    def refuse(problem: str) -> UserError:
        return UserError(where, f"is not a complete {LIBRARY} text model ({problem})", FIX_ARTIFACT)

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("it is not UTF-8 text") from None
    if "\0" in text or not text.startswith("tree\n"):
        raise refuse("it does not start with LightGBM's 'tree' line")
    start = text.find("\nTree=")
    if start < 0:
        raise refuse("it holds no tree")
    header = dict(line.split("=", 1) for line in text[:start].splitlines()[1:] if "=" in line)
    missing = [key for key in (*HEADER_KEYS, "tree_sizes") if key not in header]
    if missing:
        raise refuse(f"its header lacks {', '.join(missing)}")
    try:
        features = int(header["max_feature_idx"]) + 1
        sizes = [int(size) for size in header["tree_sizes"].split()]
    except ValueError:
        raise refuse("max_feature_idx or tree_sizes is not a number") from None
    if len(header["feature_names"].split()) != features or len(header["feature_infos"].split()) != features:
        raise refuse("feature_names or feature_infos do not list max_feature_idx + 1 features")
    position = start + 1
    for index, size in enumerate(sizes):
        block = text[position : position + size]
        problem = _tree_problem(block, index, features) if len(block) == size else "the file ends inside it"
        if problem:
            raise refuse(f"tree {index}: {problem}")
        position += size
    trailer = text[position:].lstrip("\n")
    if not trailer.startswith("end of trees"):
        raise refuse("'end of trees' does not follow the trees tree_sizes lists")
    # LightGBM parses the parameters it wrote after the trees, and a cut line ends the process.
    parameters = trailer.partition("\nparameters:\n")[2].partition("\nend of parameters\n")
    if not parameters[1] or not all(PARAMETER.fullmatch(line) for line in parameters[0].splitlines()):
        raise refuse("its parameters do not end with 'end of parameters'")
    return header


def _tree_problem(block: str, index: int, features: int) -> str:
    """Why one tree block (tree_sizes' bytes from its `Tree=i` line) would not parse, or ""."""
    lines = block.split("\n")
    if lines[0] != f"Tree={index}":
        return f"it does not start with 'Tree={index}'"
    if "" not in lines[1:]:
        return "it has no empty line after its fields"
    field_lines = lines[1 : lines.index("", 1)]  # LightGBM reads fields up to the first empty line
    if any("=" not in line for line in field_lines):
        return "a field line has no '='"
    try:
        return _fields_problem(dict(line.split("=", 1) for line in field_lines), features)
    except KeyError as missing:
        return f"it lacks {missing.args[0]}"
    except ValueError:
        return "a count, index or value is not a number"


def _fields_problem(fields: dict[str, str], features: int) -> str:
    """Why a tree's fields would send LightGBM's parser or predictor out of bounds, or ""."""
    leaves, categorical = int(fields["num_leaves"]), int(fields["num_cat"])
    values = {name: fields[name].split() for name in ("leaf_value", *(SPLIT_FIELDS if leaves > 1 else ()))}
    split_features = [int(v) for v in values.get("split_feature", [])]
    children = [int(v) for name in ("left_child", "right_child") for v in values.get(name, [])]
    list(map(float, values["leaf_value"] + values.get("threshold", [])))
    checks = [
        (
            leaves < 1 or categorical != 0 or fields.get("is_linear", "0") != "0",
            "only numeric splits and constant leaves are served (num_cat 0, is_linear 0)",
        ),
        (
            len(values["leaf_value"]) != leaves
            or any(len(values[name]) != leaves - 1 for name in SPLIT_FIELDS if leaves > 1),
            "its arrays do not have num_leaves (leaf_value) or num_leaves - 1 entries",
        ),
        (any(not 0 <= f < features for f in split_features), "a split feature is outside max_feature_idx"),
        (any(not -leaves <= c < leaves - 1 for c in children), "a child index is outside the tree"),
    ]
    return next((problem for failed, problem in checks if failed), "")
