"""skops: a scikit-learn estimator, built back only from the types its record trusts.

skops (https://skops.readthedocs.io, "Secure persistence") stores an estimator as a zip of a
JSON schema and arrays, and constructs only its default types (scikit-learn estimators, numpy
and scipy arrays) plus the ones the loader names: the record's reviewed `trusted_types`.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelctl.core.errors import UserError
from modelctl.core.formats.base import Incompatibility, Loaded, Matrix, require, unreadable

LIBRARY = "skops"
# A fixed zip timestamp (the earliest a zip can hold), so saving twice gives the same bytes.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def save(model: Any, path: Path) -> None:
    """Save with skops, normalised so that the same fitted model always gives the same bytes."""
    skops = require("skops.io", str(path))
    path.write_bytes(normalise(skops.dumps(model)))


def stored_types(data: bytes) -> list[str]:
    """The non-default types the artifact asks skops to build, sorted."""
    skops = require("skops.io", "the artifact")
    return sorted(skops.get_untrusted_types(data=data))


def load(data: bytes, trusted: Sequence[str], where: str) -> Loaded:
    """The estimator in `data`, built trusting only `trusted` (beyond skops' defaults)."""
    skops = require("skops.io", where)
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        estimator = skops.loads(data, trusted=list(trusted))
    except UntrustedTypesFoundException:
        untrusted = sorted(set(skops.get_untrusted_types(data=data)) - set(trusted))
        raise UserError(
            where,
            f"the artifact holds types the registry record does not trust: {', '.join(untrusted)}",
            "review them and list them in the version's artifact.trusted_types",
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError, ImportError, OSError, zipfile.BadZipFile) as exc:
        raise unreadable(where, LIBRARY, exc) from None
    return estimator_model(estimator)


def estimator_model(estimator: Any) -> Loaded:
    """A scikit-learn estimator as its conventions describe it: `predict_proba`,
    `n_features_in_`, `feature_names_in_`, `classes_`."""
    predict_proba = getattr(estimator, "predict_proba", None)
    names = getattr(estimator, "feature_names_in_", None)
    return Loaded(
        native=estimator,
        predict_proba=predict_proba if callable(predict_proba) else _no_probabilities,
        features=getattr(estimator, "n_features_in_", None),
        feature_names=None if names is None else [str(name) for name in names],
        classes=len(getattr(estimator, "classes_", ())),
        problem=None
        if callable(predict_proba)
        else Incompatibility(f"a {type(estimator).__name__} has no predict_proba", "serve a classifier"),
    )


def _no_probabilities(rows: Matrix) -> Matrix:
    raise TypeError("the estimator has no predict_proba")


def normalise(raw: bytes) -> bytes:
    """Rewrite a skops zip without what varies between runs.

    skops names each array file and each `__id__` after the Python object's id() (and byte
    blobs after a random uuid), and stamps every zip entry with the current time. Renumbering
    both in order of first appearance keeps every reference intact, since the mapping is one
    to one; entries are then written sorted, with a fixed timestamp.
    """
    with zipfile.ZipFile(io.BytesIO(raw)) as source:
        members = {name: source.read(name) for name in source.namelist()}
    schema = json.loads(members.pop("schema.json"))
    ids: dict[int, int] = {}
    files: dict[str, str] = {}
    _renumber(schema, ids, files, set(members))
    renamed = {files.get(name, name): data for name, data in members.items()}
    renamed["schema.json"] = json.dumps(schema, indent=2).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for name in sorted(renamed):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            target.writestr(info, renamed[name])
    return out.getvalue()


def _renumber(node: Any, ids: dict[int, int], files: dict[str, str], members: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _renumber(item, ids, files, members)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "__id__" and isinstance(value, int):
            node[key] = ids.setdefault(value, len(ids) + 1)
        elif key == "file" and isinstance(value, str) and value in members:
            suffix = re.sub(r"^[^.]*", "", value)
            node[key] = files.setdefault(value, f"{len(files) + 1}{suffix}")
        else:
            _renumber(value, ids, files, members)
