"""What every stage shares: its model's parameters, where its files live, and how they are saved.

Stages run from the repository root as `python -m pipeline <stage> <model>` (dvc.yaml), which
pins the numeric kernels first. Every file written here is byte-reproducible: the same inputs
give the same md5.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from ruamel.yaml import YAML

from modelctl.core import buildenv, formats
from modelctl.core.errors import UserError, UserErrors, as_list

PARAMS_FILE = Path("params.yaml")
ARRAYS = ("X_train", "y_train", "X_test", "y_test")


@dataclass(frozen=True)
class Paths:
    """Where one model's stage outputs live; dvc.yaml names the same paths."""

    model: str

    @property
    def data(self) -> Path:
        return Path("data") / self.model

    @property
    def artifact(self) -> Path:
        """`artifacts/<model>/<params.yaml's artifact>`: its suffix picks the format."""
        name = model_params(self.model).get("artifact")
        known = ", ".join(f"{f.file_name} ({f.name})" for f in formats.FORMATS.values())
        if name not in {f.file_name for f in formats.FORMATS.values()}:
            raise SystemExit(
                f"{PARAMS_FILE}: models.{self.model}.artifact is {name!r}; name one of {known} "
                "(modelctl/core/formats)"
            )
        return Path("artifacts") / self.model / str(name)

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


def save_artifact(model: Any, path: Path) -> None:
    """Save a fitted model in the format its file name gives (modelctl/core/formats), as
    reproducible bytes; exits naming the problem when the format cannot hold it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _one_line_errors():
        formats.by_suffix(str(path)).save(model, path)


def load_artifact(path: Path) -> formats.Loaded:
    """An artifact this pipeline just wrote, read by its format's own library; a format that
    holds code (skops) trusts its types only where the repository's reviewed allow-list
    allows each one (a stage exits naming those it refuses)."""
    from modelctl.core.state import load_allow_list
    from modelctl.core.trusted import reviewed

    with _one_line_errors():
        fmt = formats.by_suffix(str(path))
        data = path.read_bytes()
        stored = fmt.stored_types(data) if fmt.stored_types else []
        trusted = reviewed(stored, load_allow_list(Path.cwd()), str(path))
        return fmt.read(data, trusted, str(path))


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (UserError, UserErrors) as exc:
        raise SystemExit("\n".join(f"error: {error}" for error in as_list(exc))) from None
