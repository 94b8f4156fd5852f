"""A small real training repository for registry tests: real git, real dvc, tiny data.

It holds this repository's pipeline code, dvc.yaml and model files, with row counts cut down
so a run takes seconds, and two registered fraud-detection versions trained with different
params. Building it is slow, so it is built once per test process and copied per test.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from modelctl.core import yamlio
from modelctl.repo import dvcstore, registry
from tests.factories import run_git, stack_doc

SOURCE = Path(__file__).resolve().parents[1]
COPIED = [
    ".gitignore",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "dvc.yaml",
    "Pulumi.yaml",
    "models/trusted-types.yaml",
]
MODEL = "fraud-detection"
# Tiny, but still imbalanced and learnable; two train settings give two different artifacts.
PARAMS: dict[str, Any] = {
    "models": {
        MODEL: {
            "artifact": "model.skops",
            "data": {
                "generator": "transactions",
                "rows": 1500,
                "fraud_rate": 0.05,
                "stealth": 1.0,
                "test_size": 0.3,
                "seed": 7,
            },
            "train": {
                "algorithm": "hist_gradient_boosting",
                "max_iter": 10,
                "learning_rate": 0.3,
                "class_weight": "balanced",
                "early_stopping": False,
                "random_state": 0,
            },
        },
        "churn": {
            "artifact": "model.skops",
            "data": {"generator": "churn", "rows": 300, "churn_rate": 0.25, "test_size": 0.25, "seed": 3},
            "train": {"algorithm": "logistic_regression", "C": 1.0, "max_iter": 200},
        },
    }
}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def stages(model: str = MODEL) -> list[str]:
    return registry.stage_names(model)


# The other formats' versions of formats_template(): (model, artifact, train params).
FORMAT_VERSIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "xgboost": (
        MODEL,
        "model.ubj",
        {"algorithm": "xgboost", "n_estimators": 20, "max_depth": 3, "learning_rate": 0.3, "random_state": 0},
    ),
    "lightgbm": (
        MODEL,
        "model.txt",
        {
            "algorithm": "lightgbm",
            "n_estimators": 20,
            "num_leaves": 7,
            "learning_rate": 0.3,
            "random_state": 0,
        },
    ),
    "onnx": ("churn", "model.onnx", PARAMS["models"]["churn"]["train"]),
}


def set_train_param(root: Path, key: str, value: Any, model: str = MODEL) -> None:
    params = yamlio.load(root / "params.yaml")
    params["models"][model]["train"][key] = value
    yamlio.dump_file(root / "params.yaml", params)


def set_training(root: Path, model: str, artifact: str, train: dict[str, Any]) -> None:
    """params.yaml trains `model` with `train` into `artifact` (its format by the suffix)."""
    params = yamlio.load(root / "params.yaml")
    params["models"][model]["artifact"] = artifact
    params["models"][model]["train"] = train
    yamlio.dump_file(root / "params.yaml", params)


def repro_and_commit(root: Path, message: str, model: str = MODEL) -> None:
    dvcstore.run_dvc(root, "repro", *stages(model))
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", message)


def build(root: Path) -> Path:
    """The template: pipeline committed, v1.0.0 and v1.1.0 registered, dev and staging serving them."""
    for name in COPIED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SOURCE / name, root / name)
    for package in ("pipeline", "modelctl"):
        shutil.copytree(SOURCE / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for model in ("fraud-detection", "churn"):
        (root / "models" / model).mkdir(parents=True)
        text = (SOURCE / "models" / model / "model.yaml").read_text(encoding="utf-8")
        (root / "models" / model / "model.yaml").write_text(_without_versions(text), encoding="utf-8")
    yamlio.dump_file(root / "params.yaml", PARAMS)
    run_git(root, "init", "-q", "-b", "main")
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", "pipeline and model files")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in GIT_ENV.items():
            patch.setenv(key, value)
        repro_and_commit(root, "train fraud-detection: 10 iterations")
        registry.register(root, MODEL, version="v1.0.0")
        set_train_param(root, "max_iter", 20)
        set_train_param(root, "learning_rate", 0.1)
        repro_and_commit(root, "train fraud-detection: 20 iterations, slower learning")
        registry.register(root, MODEL)
    write_stacks(root, {"dev": {"v1.1.0": 100}, "staging": {"v1.0.0": 90, "v1.1.0": 10}})
    return root


def _without_versions(text: str) -> str:
    """The hand-written part of a model file, as before anything was registered."""
    head = text.split("\nversions:", 1)[0]
    return head + "\nversions: {}\n"


def write_stacks(root: Path, traffic: dict[str, dict[str, int]]) -> None:
    for stack, weights in traffic.items():
        yamlio.dump_file(root / f"Pulumi.{stack}.yaml", stack_doc(weights, namespace=f"models-{stack}"))
    run_git(root, "add", "--", *(f"Pulumi.{stack}.yaml" for stack in traffic))
    run_git(root, "commit", "-q", "-m", f"traffic: {', '.join(traffic)}")


def copy(source: Path, target: Path) -> Path:
    """A private copy of a test repository and of its DVC remote (the folder beside it), if any."""
    shutil.copytree(source, target, symlinks=True)
    if remote(source).exists():
        shutil.copytree(remote(source), remote(target))
    return target


def remote(root: Path) -> Path:
    """Where .dvc/config's relative default remote resolves: beside the repository."""
    return root.parent / "modelctl-dvc-remote"


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def record(root: Path, version: str) -> Any:
    from modelctl.core.state import load_model

    return load_model(root, MODEL).versions[version]


_BUILT: dict[str, Path] = {}


def template(factory: pytest.TempPathFactory) -> Path:
    """The template repository, built once per test process; tests copy it, never change it."""
    if "template" not in _BUILT:
        _BUILT["template"] = build(factory.mktemp("template") / "repo")
    return _BUILT["template"]


def formats_template(factory: pytest.TempPathFactory) -> Path:
    """The template with a version in every other format, each trained, registered and pushed
    to the DVC remote beside it: fraud-detection v1.2.0 (XGBoost) and v1.3.0 (LightGBM), churn
    v1.0.0 (ONNX, its logistic regression converted by skl2onnx). Built once per test process."""
    if "formats" not in _BUILT:
        root = copy(template(factory), factory.mktemp("formats") / "repo")
        with pytest.MonkeyPatch.context() as patch:
            for key, value in GIT_ENV.items():
                patch.setenv(key, value)
            for name, (model, artifact, train) in FORMAT_VERSIONS.items():
                set_training(root, model, artifact, train)
                repro_and_commit(root, f"train {model}: {name}", model)
                registry.register(root, model)
        push_all(root)
        _BUILT["formats"] = root
    return _BUILT["formats"]


def push_all(root: Path) -> None:
    """Every version's objects into the default remote, with real `dvc push`.

    For other commits DVC resolves a relative remote URL against the commit's tree (so
    `../../x` becomes `/x`); an absolute URL in .dvc/config.local avoids that.
    """
    dvcstore.run_dvc(root, "remote", "modify", "--local", "local", "url", str(remote(root)))
    dvcstore.run_dvc(root, "push", "--all-commits", "-q")
    (root / ".dvc" / "config.local").unlink()


def tamper(root: Path, md5: str) -> Path:
    """Flip one byte of the remote's copy of an object, keeping its size."""
    path = remote(root) / dvcstore.object_path(md5)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return path
