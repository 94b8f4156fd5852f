"""Only reviewed code in artifacts: skops trusted types come from the repository's allow-list.

`register` refuses an artifact holding a type the allow-list does not allow, naming each one;
`check` refuses a record listing one; the pipeline's stages and the server never load with what
the artifact asks for (skops-dev/skops#422, CVE-2024-37065).
"""

from __future__ import annotations

import builtins
import functools
import importlib
import json
import operator
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from modelctl.core import yamlio
from modelctl.core.errors import UserError, UserErrors, as_list
from modelctl.core.schema import ModelFile
from modelctl.core.servingspec import ServingSpec
from modelctl.core.state import load_allow_list
from modelctl.core.trusted import ALLOW_LIST_FILE, AllowList
from modelctl.repo import dvcstore, gitutil, registry
from pipeline.common import load_artifact
from tests import pipeline_repo
from tests.conftest import Cli
from tests.factories import model_doc, run_git, write_repo
from tests.pipeline_repo import MODEL

ROOT = Path(__file__).resolve().parents[1]
REVIEWED = load_allow_list(ROOT)
TREE_PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"

# Callables a FunctionTransformer (or any estimator attribute) can carry into an artifact.
DANGEROUS: dict[str, Callable[..., Any]] = {
    "os.system": os.system,
    "builtins.eval": builtins.eval,
    "builtins.exec": builtins.exec,
    "builtins.getattr": builtins.getattr,
    "builtins.__import__": builtins.__import__,
    "subprocess.Popen": subprocess.Popen,
    "subprocess.run": subprocess.run,
    "importlib.import_module": importlib.import_module,
    "pickle.loads": pickle.loads,
    "shutil.rmtree": shutil.rmtree,
    "numpy.load": np.load,
    "operator.methodcaller": operator.methodcaller("system", "id"),
    "functools.partial(os.system)": functools.partial(os.system, "id"),
}
# Names a record could be edited to trust, each refused whatever the allow-list says.
DENIED_NAMES = [
    "posix.system",
    "nt.system",
    "os.popen",
    "builtins.eval",
    "builtins.exec",
    "builtins.getattr",
    "builtins.__import__",
    "builtins.open",
    "builtins.compile",
    "subprocess.Popen",
    "importlib.import_module",
    "_pickle.loads",
    "marshal.loads",
    "shutil.rmtree",
    "sys.modules",
    "socket.socket",
    "ctypes.CDLL",
    "runpy.run_path",
    "code.InteractiveInterpreter",
    "operator.attrgetter",
    "numpy.load",
    "numpy.testing._private.utils.runstring",
    "sklearn.datasets.fetch_openml",
]


def artifact_types(obj: Any) -> list[str]:
    """What skops lists as not trusted by default in a dump of `obj` (the object is never loaded)."""
    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(obj)))


def errors_of(exc: pytest.ExceptionInfo[Exception]) -> list[str]:
    assert isinstance(exc.value, UserError | UserErrors)
    return [str(error) for error in as_list(exc.value)]


@pytest.mark.parametrize("name", sorted(DANGEROUS))
def test_register_refuses_an_artifact_carrying_code_naming_each_type(tmp_path: Path, name: str) -> None:
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(
        skops.io.dumps(make_pipeline(FunctionTransformer(func=DANGEROUS[name]), LogisticRegression()))
    )
    listed = skops.io.get_untrusted_types(file=artifact)
    assert listed  # skops asks for them: recording them blindly is what the allow-list prevents

    with pytest.raises((UserError, UserErrors)) as refused:
        registry._trusted_types(ROOT, artifact, "artifacts/m/model.skops")

    lines = errors_of(refused)
    assert len(lines) == len(listed)
    for line, type_name in zip(lines, sorted(listed), strict=True):
        assert line.startswith(f"artifacts/m/model.skops: trusted type {type_name} ")


def test_register_records_the_types_the_repository_pipelines_need(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    model = HistGradientBoostingClassifier(max_iter=3).fit(rng.normal(size=(100, 3)), rng.integers(0, 2, 100))
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(skops.io.dumps(model))

    assert registry._trusted_types(ROOT, artifact, "model.skops") == [TREE_PREDICTOR]


@pytest.mark.parametrize("name", DENIED_NAMES)
def test_denied_names_are_refused_even_when_the_allow_list_covers_their_namespace(name: str) -> None:
    everything = AllowList(
        namespaces=(name.split(".", maxsplit=1)[0], "numpy", "sklearn", "builtins", "os"), types=(name,)
    )

    reason = everything.refusal(name)

    assert reason is not None
    assert reason.startswith(f"trusted type {name} ")
    assert reason.endswith("never trusted")


def test_the_reviewed_list_allows_the_ml_stack_and_nothing_else() -> None:
    assert REVIEWED.refusal(TREE_PREDICTOR) is None
    assert REVIEWED.refusal("scipy.sparse._csr.csr_matrix") is None
    assert REVIEWED.refusal("numpy.random._generator.Generator") is None
    for outside in ("builtins.len", "collections.Counter", "xgboost.core.Booster", "sklearnx.Evil"):
        assert (
            REVIEWED.refusal(outside)
            == f"trusted type {outside} is not in the reviewed allow-list {ALLOW_LIST_FILE}"
        )


def with_trusted(version: str, names: list[str], status: str = "active") -> dict[str, Any]:
    doc = model_doc()
    doc["versions"][version]["artifact"]["trusted_types"] = names
    doc["versions"][version]["status"] = status
    return doc


@pytest.mark.parametrize("name", DENIED_NAMES)
def test_check_base_refuses_a_new_record_trusting_code(tmp_path: Path, cli: Cli, name: str) -> None:
    """Case 06: a new version record whose trusted types give code execution fails `check --base`."""
    root = write_repo(tmp_path / "repo", models={"fraud-detection": model_doc(versions=("v1.0.0",))})
    doc = model_doc(versions=("v1.0.0", "v1.1.0"))
    doc["versions"]["v1.1.0"]["artifact"]["trusted_types"] = [TREE_PREDICTOR, name]
    yamlio.dump_file(root / "models/fraud-detection/model.yaml", doc)

    code, _, err = cli(root, "check", "--base", "HEAD")

    assert code != 0
    lines = (root / "models/fraud-detection/model.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip() == f"- {name}")
    assert err.splitlines() == [
        f"error: models/fraud-detection/model.yaml:{line}: versions.v1.1.0.artifact.trusted_types.1: trusted type "
        f"{name} {REVIEWED.refusal(name).removeprefix(f'trusted type {name} ')}; if the record is merged, "  # type: ignore[union-attr]
        "revoke it (modelctl revoke fraud-detection v1.1.0), if it is new in this change, delete it; then register "
        "a model without that type"
    ]


def test_check_refuses_a_merged_record_edited_to_trust_a_denied_type(tmp_path: Path, cli: Cli) -> None:
    root = write_repo(tmp_path / "repo")
    yamlio.dump_file(root / "models/fraud-detection/model.yaml", with_trusted("v1.0.0", ["posix.system"]))

    code, _, err = cli(root, "check")

    assert code != 0
    assert "versions.v1.0.0.artifact.trusted_types.0: trusted type posix.system starts processes" in err


def test_check_refuses_a_type_outside_the_allow_list_until_a_reviewed_commit_adds_it(
    tmp_path: Path, cli: Cli
) -> None:
    root = write_repo(
        tmp_path / "repo", models={"fraud-detection": with_trusted("v1.1.0", ["acme_features.Bucketizer"])}
    )
    code, _, err = cli(root, "check")
    assert code != 0
    assert f"trusted type acme_features.Bucketizer is not in the reviewed allow-list {ALLOW_LIST_FILE}" in err
    assert f"or add it to {ALLOW_LIST_FILE} in a reviewed commit" in err

    allow = root / ALLOW_LIST_FILE
    allow.write_text(allow.read_text().replace("types: []", "types:\n  - acme_features.Bucketizer"))

    assert cli(root, "check")[0] == 0


def test_a_revoked_record_may_keep_what_it_trusted(tmp_path: Path, cli: Cli) -> None:
    """Records are immutable: revoking is how a record trusting a refused type stops blocking."""
    doc = with_trusted("v1.1.0", ["posix.system"], status="revoked")
    root = write_repo(tmp_path / "repo", models={"fraud-detection": doc}, stacks={})

    assert cli(root, "check")[0] == 0


def test_without_the_allow_list_only_skops_defaults_are_trusted(tmp_path: Path, cli: Cli) -> None:
    root = write_repo(tmp_path / "repo")
    (root / ALLOW_LIST_FILE).unlink()

    code, _, err = cli(root, "check")

    assert code != 0
    assert f"trusted type {TREE_PREDICTOR} is not in the reviewed allow-list" in err


def test_a_malformed_allow_list_is_one_line_naming_the_key(tmp_path: Path, cli: Cli) -> None:
    root = write_repo(tmp_path / "repo")
    (root / ALLOW_LIST_FILE).write_text("namespaces: [sklearn]\ntype: [numpy.ndarray]\n")

    code, _, err = cli(root, "check")

    assert code != 0
    assert err.startswith(f"error: {ALLOW_LIST_FILE}:2: type: ")


def test_the_server_never_trusts_a_denied_type_whatever_its_environment_says() -> None:
    spec = ServingSpec.from_record(ModelFile.model_validate(model_doc()), "v1.0.0", "/models")
    env = spec.to_env()
    env["MODELCTL_TRUSTED_TYPES"] = json.dumps([TREE_PREDICTOR, "posix.system", "builtins.exec"])

    with pytest.raises((UserError, UserErrors)) as refused:
        ServingSpec.from_env(env)

    assert [line.split(": ", 1)[1] for line in errors_of(refused)] == [
        "trusted type posix.system starts processes or calls the operating system; render it again with modelctl render",
        "trusted type builtins.exec runs arbitrary code; render it again with modelctl render",
    ]


def test_the_pipeline_loads_with_the_reviewed_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(
        skops.io.dumps(make_pipeline(FunctionTransformer(func=os.system), LogisticRegression()))
    )
    monkeypatch.chdir(ROOT)

    with pytest.raises(SystemExit) as stopped:
        load_artifact(artifact)

    assert str(stopped.value).startswith(f"error: {artifact}: trusted type posix.system starts processes")


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_repo.template(tmp_path_factory)


def test_dvc_repro_stops_at_evaluate_when_train_saves_code(template: Path, tmp_path: Path) -> None:
    """The real pipeline: a train stage that saves os.system makes evaluate refuse it, naming it."""
    root = pipeline_repo.copy(template, tmp_path / "repo")
    train = root / "pipeline" / "train.py"
    train.write_text(
        train.read_text().replace(
            "save_artifact(train(name), Paths(name).artifact)",
            "import os\n    from sklearn.preprocessing import FunctionTransformer\n"
            "    save_artifact(FunctionTransformer(func=os.system), Paths(name).artifact)",
        )
    )
    dvcstore.run_dvc(root, "repro", f"train@{MODEL}")
    metrics = root / "metrics" / f"{MODEL}.json"
    before = metrics.read_text()

    evaluate = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", MODEL], cwd=root, capture_output=True, text=True
    )

    assert evaluate.returncode == 1
    assert evaluate.stderr == (
        f"error: artifacts/{MODEL}/model.skops: trusted type posix.system starts processes or calls the "
        "operating system, and is never trusted; rebuild the model without it\n"
    )
    assert metrics.read_text() == before


def test_register_refuses_a_run_whose_types_the_allow_list_no_longer_covers(
    template: Path, tmp_path: Path, cli: Cli
) -> None:
    root = pipeline_repo.copy(template, tmp_path / "repo")
    pipeline_repo.set_train_param(root, "max_iter", 15)
    pipeline_repo.repro_and_commit(root, "train: 15 iterations")
    (root / ALLOW_LIST_FILE).write_text("namespaces: [numpy, scipy]\n")
    run_git(root, "commit", "-q", "-am", "allow-list without sklearn")
    head = gitutil.head(root)

    code, _, err = cli(root, "register", MODEL)

    assert code != 0
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: artifacts/{MODEL}/model.skops: trusted type {TREE_PREDICTOR} is not in the reviewed "
        f"allow-list {ALLOW_LIST_FILE}; rebuild the model without it, or add it to {ALLOW_LIST_FILE} "
        "in a reviewed commit"
    ]
    assert gitutil.head(root) == head
