"""Every format from training to a served answer: skops, XGBoost, LightGBM and ONNX.

One repository (tests/pipeline_repo.py formats_template) trains and registers a version in
each format through the real pipeline (`dvc repro`, `modelctl register`) and pushes it to its
DVC remote. Per format: the record (format, file name, trusted types), `modelctl serve` on it
answering every request form (/predict, MLflow's /invocations, KServe v1, the Open Inference
Protocol through tritonclient) with the native library's probabilities, the engine that
serves and its parity, and a file that is not what its record says refused in one line. Then
one local stack (`modelctl up`) serving three formats behind one gateway: an A/B split of
LightGBM and XGBoost, a scikit-learn shadow, and an ONNX model.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from modelctl.core import yamlio
from modelctl.core.errors import UserError
from modelctl.core.formats import FORMATS
from modelctl.core.servingspec import ServingSpec
from modelctl.core.state import load_model
from modelctl.repo import dvcstore
from onebox.traffic import json_rows
from serving.compiled import reference_rows
from serving.formats import RUNTIMES
from serving.model import load_model as load_served
from serving.monitor import load_profile
from tests import pipeline_repo
from tests.factories import run_git, stack_doc
from tests.test_local_stack import modelctl, requests_counted, up, wait_for
from tests.test_serving_helpers import ROOT, serve_ready

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local-stack")]

# format -> (model, version) in formats_template; the compiled engine and OIP platform of each.
VERSIONS = {
    "skops": ("fraud-detection", "v1.0.0"),
    "xgboost": ("fraud-detection", "v1.2.0"),
    "lightgbm": ("fraud-detection", "v1.3.0"),
    "onnx": ("churn", "v1.0.0"),
}
ENGINES = {"skops": "treelite", "xgboost": "treelite", "lightgbm": "treelite", "onnx": "onnxruntime"}
PLATFORMS = {"skops": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm", "onnx": "onnxruntime_onnx"}
ROWS = 5


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_repo.formats_template(tmp_path_factory)


@dataclasses.dataclass(frozen=True)
class Registered:
    """A registered version: its artifact's bytes from the DVC cache, and held-out rows."""

    model: str
    version: str
    format: str
    data: bytes
    rows: np.ndarray[Any, Any]
    types: list[str]
    classes: list[str]

    def native(self) -> np.ndarray[Any, Any]:
        """The rows' probabilities as the format's own library computes them."""
        loaded = FORMATS[self.format].read(self.data, self.trusted(), self.format)
        return np.asarray(loaded.predict_proba(self.rows))

    def trusted(self) -> list[str]:
        stored = FORMATS[self.format].stored_types
        return stored(self.data) if stored else []


def registered(root: Path, fmt: str) -> Registered:
    model, version = VERSIONS[fmt]
    model_file = load_model(root, model)
    record = model_file.versions[version]
    data = (root / ".dvc" / "cache" / dvcstore.object_path(record.artifact.md5)).read_bytes()
    rows = np.load(root / "data" / model / "X_test.npy")[:ROWS]
    types: list[str] = [f.type for f in model_file.signature.features]
    return Registered(model, version, fmt, data, rows, types, list(model_file.output.classes))


def test_the_readme_lists_every_format_of_the_table() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| `model." in line]
    assert [row.split(" | ")[:2] for row in rows] == [
        [f"| {f.name}", f"`{f.file_name}`"] for f in FORMATS.values()
    ]


@pytest.mark.parametrize("fmt", list(VERSIONS))
def test_register_records_the_format_and_no_trusted_types_for_formats_without_code(
    repo: Path, fmt: str
) -> None:
    model, version = VERSIONS[fmt]
    record = load_model(repo, model).versions[version]

    assert record.artifact.format == fmt
    assert record.artifact.path == f"artifacts/{model}/{FORMATS[fmt].file_name}"
    if fmt == "skops":
        assert record.artifact.trusted_types == [
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
        ]
    else:
        assert record.artifact.trusted_types == []
        assert "nothing in it is code, so there are no types to trust" in FORMATS[fmt].trust
    assert record.build is not None
    assert {"xgboost-cpu", "lightgbm", "onnx", "skl2onnx"} <= set(record.build.packages)


@pytest.fixture(scope="module")
def servers(repo: Path) -> Iterator[dict[str, str]]:
    """`modelctl serve` on each format's version, all started at once; stopped by pid."""
    processes: dict[str, tuple[subprocess.Popen[str], str]] = {}

    def start(model: str, version: str, port: int) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "modelctl", "-C", str(repo), "serve", model, version]
        return subprocess.Popen(
            [*command, "--port", str(port), "--drift-interval-s", "3600"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    try:
        for fmt, (model, version) in VERSIONS.items():
            processes[fmt] = serve_ready(partial(start, model, version))
        yield {fmt: url for fmt, (_, url) in processes.items()}
    finally:
        for process, _ in processes.values():
            process.terminate()
            process.communicate(timeout=30)


def check_batch(body: dict[str, Any], version: Registered, expected: np.ndarray[Any, Any]) -> None:
    assert body["predictions"] == [version.classes[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(
        body["probabilities"], expected, rtol=0, atol=RUNTIMES[version.format].tolerance
    )


@pytest.mark.parametrize("fmt", list(VERSIONS))
def test_modelctl_serve_answers_every_request_form_with_the_native_probabilities(
    repo: Path, servers: dict[str, str], fmt: str
) -> None:
    version = registered(repo, fmt)
    expected = version.native()
    url, model = servers[fmt], version.model
    rows = json_rows(version.rows, version.types)
    names = load_model(repo, model).signature.names
    tolerance = RUNTIMES[fmt].tolerance

    metadata = httpx.get(f"{url}/v2/models/{model}", timeout=10).json()
    assert metadata["platform"] == PLATFORMS[fmt]
    assert metadata["parameters"]["engine"] == ENGINES[fmt]

    one = httpx.post(f"{url}/predict", json={"features": rows[0]}, timeout=10).json()
    assert one["version"] == version.version
    assert one["prediction"] == version.classes[int(expected[0].argmax())]
    np.testing.assert_allclose(one["probability"], expected[0], rtol=0, atol=tolerance)
    named = [dict(zip(names, row, strict=True)) for row in rows]
    for path, body in [
        ("/predict", {"instances": rows}),
        ("/predict", {"instances": named}),
        ("/invocations", {"dataframe_split": {"columns": names, "data": rows}}),
        ("/invocations", {"dataframe_records": named}),
        (f"/v1/models/{model}:predict", {"instances": rows}),
    ]:
        response = httpx.post(f"{url}{path}", json=body, timeout=10)
        assert response.status_code == 200, (path, response.text)
        check_batch(response.json(), version, expected)

    client = triton.InferenceServerClient(url.removeprefix("http://"))
    for datatype, binary in [("FP64", False), ("FP32", True)]:
        tensor = triton.InferInput("input-0", list(version.rows.shape), datatype)
        tensor.set_data_from_numpy(
            version.rows.astype(np.float64 if datatype == "FP64" else np.float32), binary
        )
        result = client.infer(
            model,
            [tensor],
            outputs=[
                triton.InferRequestedOutput("predict_proba", binary_data=binary),
                triton.InferRequestedOutput("predict", binary_data=binary),
            ],
        )
        served = result.as_numpy("predict_proba")
        # FP32 inputs are the rows rounded to float32: compare with the library on those rows.
        reference = (
            expected
            if datatype == "FP64"
            else np.asarray(
                FORMATS[fmt]
                .read(version.data, version.trusted(), fmt)
                .predict_proba(version.rows.astype(np.float32).astype(np.float64))
            )
        )
        np.testing.assert_allclose(served, reference, rtol=0, atol=tolerance)
        assert [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("predict")] == [
            version.classes[i] for i in reference.argmax(axis=1)
        ]


def spec_for(repo: Path, fmt: str, data: bytes, folder: Path) -> ServingSpec:
    """The spec of `fmt`'s version, its artifact replaced by `data` (recorded with its sha256:
    a record made from a bad file)."""
    import hashlib

    model, version = VERSIONS[fmt]
    record = load_model(repo, model).versions[version]
    cache = repo / ".dvc" / "cache"
    (folder / FORMATS[fmt].file_name).write_bytes(data)
    (folder / "profile.npz").write_bytes((cache / dvcstore.object_path(record.profile.md5)).read_bytes())
    spec = ServingSpec.from_record(load_model(repo, model), version, str(folder))
    return dataclasses.replace(spec, sha256=hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("fmt", ["xgboost", "lightgbm", "onnx"])
@pytest.mark.parametrize("damage", ["a pickle renamed", "truncated"])
def test_a_file_that_is_not_what_its_record_says_is_refused_in_one_line(
    repo: Path, tmp_path: Path, fmt: str, damage: str
) -> None:
    version = registered(repo, fmt)
    loaded = FORMATS[fmt].read(version.data, [], fmt).native
    data = (
        pickle.dumps(loaded) if damage == "a pickle renamed" else version.data[: len(version.data) * 2 // 3]
    )
    spec = spec_for(repo, fmt, data, tmp_path)

    with pytest.raises(UserError) as refused:
        load_served(spec, reference_rows(load_profile(spec), spec.signature))

    [line] = str(refused.value).splitlines()
    assert line.startswith(f"{spec.artifact_path}: is ")
    if damage == "a pickle renamed":
        assert (
            f"is a Python pickle (loading one runs arbitrary code), not a model in the {fmt} format" in line
        )


def test_the_pipeline_refuses_a_pickle_saved_under_a_model_files_name(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = pipeline_repo.copy(pipeline_repo.template(tmp_path_factory), tmp_path / "repo")
    model, artifact, train = pipeline_repo.FORMAT_VERSIONS["xgboost"]
    pipeline_repo.set_training(root, model, artifact, train)
    stage = root / "pipeline" / "train.py"
    stage.write_text(
        stage.read_text().replace(
            "save_artifact(train(name), Paths(name).artifact)",
            "Paths(name).artifact.write_bytes(__import__('pickle').dumps(train(name)))",
        )
    )
    dvcstore.run_dvc(root, "repro", f"train@{model}")

    evaluate = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", model], cwd=root, capture_output=True, text=True
    )

    assert evaluate.returncode == 1
    assert evaluate.stderr.splitlines() == [
        f"error: artifacts/{model}/{artifact}: is a Python pickle (loading one runs arbitrary code), not a "
        "model in the xgboost format; fetch it again ('modelctl fetch'), rebuild it ('dvc repro'), or "
        "correct the record's artifact.format"
    ]


# ---------------------------------------------------------------------------- the local stack

FRAUD = {"traffic": {"v1.3.0": 50, "v1.2.0": 50}, "shadow": {"version": "v1.0.0", "percent": 50}}


@pytest.fixture(scope="module")
def stack(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """dev: fraud-detection split 50/50 between LightGBM v1.3.0 and XGBoost v1.2.0 by
    `modelctl ab`, scikit-learn v1.0.0 mirroring half of it; churn on ONNX v1.0.0."""
    root = pipeline_repo.copy(repo, tmp_path_factory.mktemp("formats-stack") / "repo")
    doc = stack_doc({"v1.3.0": 100}, namespace="models-dev")
    doc["config"]["modelctl:releases"]["churn"] = {"traffic": {"v1.0.0": 100}}
    yamlio.dump_file(root / "Pulumi.dev.yaml", doc)
    run_git(root, "commit", "-qam", "dev serves LightGBM and ONNX")
    split = modelctl(
        root, "ab", pipeline_repo.MODEL, "--split", "v1.3.0=50,v1.2.0=50",
        "--metric", "accuracy", "--effect", "0.02", "--stack", "dev",
    )  # fmt: skip
    assert split.returncode == 0, split.stderr
    shadow = modelctl(root, "shadow", pipeline_repo.MODEL, "v1.0.0", "--percent", "50", "--stack", "dev")
    assert shadow.returncode == 0, shadow.stderr
    yield {**up(root, "dev"), "root": root}
    modelctl(root, "down", "--stack", "dev")


def test_one_local_stack_serves_every_format_split_mirrored_and_side_by_side(stack: dict[str, Any]) -> None:
    root = stack["root"]
    versions = {model: stack["models"][model]["versions"] for model in ("fraud-detection", "churn")}
    assert set(versions["fraud-detection"]) == {"v1.0.0", "v1.2.0", "v1.3.0"}
    engines = {
        (model, version): httpx.get(f"{url}/v2/models/{model}", timeout=10).json()
        for model, urls in versions.items()
        for version, url in urls.items()
    }
    assert {key: (m["platform"], m["parameters"]["engine"]) for key, m in engines.items()} == {
        ("fraud-detection", "v1.0.0"): ("sklearn", "treelite"),
        ("fraud-detection", "v1.2.0"): ("xgboost", "treelite"),
        ("fraud-detection", "v1.3.0"): ("lightgbm", "treelite"),
        ("churn", "v1.0.0"): ("onnxruntime_onnx", "onnxruntime"),
    }
    answered: Counter[tuple[str, str]] = Counter()
    with httpx.Client(timeout=10) as client:
        for model, fmt in [("fraud-detection", "xgboost"), ("churn", "onnx")]:
            version = registered(root, fmt)
            for row in json_rows(version.rows, version.types) * 8:
                response = client.post(
                    f"{stack['gateway']}/predict",
                    json={"features": row},
                    headers={"host": stack["models"][model]["host"]},
                )
                assert response.status_code == 200, response.text
                answered[(model, response.headers["x-model-version"])] += 1
    assert set(answered) == {
        ("fraud-detection", "v1.2.0"),
        ("fraud-detection", "v1.3.0"),
        ("churn", "v1.0.0"),
    }
    shadow = versions["fraud-detection"]["v1.0.0"]
    wait_for("the scikit-learn shadow's mirrored requests", lambda: requests_counted(shadow) > 0, timeout=30)
    release = yamlio.load(root / "Pulumi.dev.yaml")["config"]["modelctl:releases"]["fraud-detection"]
    assert dict(release["traffic"]) == FRAUD["traffic"]
    assert dict(release["shadow"]) == FRAUD["shadow"]


def test_ab_analyze_counts_each_formats_labels_on_the_version_that_predicted(stack: dict[str, Any]) -> None:
    """The A/B split of LightGBM v1.3.0 against XGBoost v1.2.0 is judged on ground truth: each
    label, sent through the gateway with its prediction's receipt, is counted for the format that
    made the prediction (the scikit-learn shadow's mirrored answers get none)."""
    root, model = stack["root"], "fraud-detection"
    version = registered(root, "xgboost")
    host = {"host": stack["models"][model]["host"]}
    predicted: Counter[str] = Counter()
    with httpx.Client(timeout=10) as client:
        for row in json_rows(version.rows, version.types) * 8:
            answer = client.post(f"{stack['gateway']}/predict", json={"features": row}, headers=host)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            label = {"receipt": body["receipt"], "label": body["prediction"]}
            taken = client.post(f"{stack['gateway']}/feedback", json=label, headers=host)
            assert taken.status_code == 200, taken.text
            predicted[answer.headers["x-model-version"]] += 1
    assert set(predicted) == {"v1.2.0", "v1.3.0"}

    def labelled() -> dict[str, float]:
        proc = modelctl(root, "ab", "analyze", "--stack", "dev", "--model", model, "--dry-run", "--json")
        assert proc.returncode in (0, 3), proc.stderr
        [analysis] = json.loads(proc.stdout)["analyses"]
        return dict(analysis["decision"]["labelled"])

    wait_for("both formats' labels in Prometheus", lambda: labelled() == dict(predicted), timeout=60)
