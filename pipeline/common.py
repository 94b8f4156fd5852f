"""What every stage shares: its model's parameters, where its files live, and how they are saved.

Stages run from the repository root as `python -m pipeline <stage> <model>` (dvc.yaml), which
pins the numeric kernels first. Every file written here is byte-reproducible: the same inputs
give the same md5.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from ruamel.yaml import YAML

from modelctl.core import buildenv

PARAMS_FILE = Path("params.yaml")
ARRAYS = ("X_train", "y_train", "X_test", "y_test")
# A fixed zip timestamp (the earliest a zip can hold), so saving twice gives the same bytes.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Paths:
    """Where one model's stage outputs live; dvc.yaml names the same paths."""

    model: str

    @property
    def data(self) -> Path:
        return Path("data") / self.model

    @property
    def artifact(self) -> Path:
        return Path("artifacts") / self.model / "model.skops"

    @property
    def profile(self) -> Path:
        return Path("artifacts") / self.model / "profile.npz"

    @property
    def metrics(self) -> Path:
        return Path("metrics") / f"{self.model}.json"

    @property
    def plots(self) -> Path:
        return Path("plots") / self.model


def model_params(model: str, params_file: Path = PARAMS_FILE) -> dict[str, Any]:
    models = YAML(typ="safe").load(params_file.read_text(encoding="utf-8")).get("models") or {}
    if model not in models:
        raise SystemExit(f"{params_file}: models.{model} is missing; add the model's params there")
    params: dict[str, Any] = models[model]
    return params


def model_from_argv() -> str:
    """The model a stage runs for; refuses a stage started without the pinned kernels."""
    stage = Path(sys.argv[0]).stem
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m pipeline {stage} <model>")
    if not buildenv.applied(os.environ, buildenv.pins()):
        raise SystemExit(
            f"run the stage as `python -m pipeline {stage} {sys.argv[1]}` (dvc repro does): "
            "it pins the numeric kernels before numpy loads, so the bytes do not depend on the CPU"
        )
    return sys.argv[1]


@dataclass(frozen=True)
class Dataset:
    features: list[str]
    categorical: list[str]
    X_train: npt.NDArray[np.float64]
    y_train: npt.NDArray[np.int64]
    X_test: npt.NDArray[np.float64]
    y_test: npt.NDArray[np.int64]


def save_dataset(folder: Path, dataset: Dataset) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS:
        # np.save writes no timestamp, unlike np.savez, so the folder's md5 is reproducible.
        np.save(folder / f"{name}.npy", getattr(dataset, name), allow_pickle=False)
    write_json(folder / "features.json", {"names": dataset.features, "categorical": dataset.categorical})


def load_dataset(folder: Path) -> Dataset:
    arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in ARRAYS}
    features = json.loads((folder / "features.json").read_text(encoding="utf-8"))
    return Dataset(features=features["names"], categorical=features["categorical"], **arrays)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_skops(model: Any, path: Path) -> None:
    """Save with skops, normalised so that the same fitted model always gives the same bytes."""
    import skops.io

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(normalise_skops(skops.io.dumps(model)))


def load_skops(path: Path) -> Any:
    """Load an artifact this pipeline just wrote, trusting its types only where the repository's
    reviewed allow-list allows each one (a stage exits naming those it refuses)."""
    import skops.io

    from modelctl.core.errors import UserError, UserErrors, as_list
    from modelctl.core.state import load_allow_list
    from modelctl.core.trusted import reviewed

    try:
        trusted = reviewed(skops.io.get_untrusted_types(file=path), load_allow_list(Path.cwd()), str(path))
    except (UserError, UserErrors) as exc:
        raise SystemExit("\n".join(f"error: {error}" for error in as_list(exc))) from None
    return skops.io.load(path, trusted=trusted)


def normalise_skops(raw: bytes) -> bytes:
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
