"""The training pipeline: reproducible bytes, safe artifacts, data that matches the signatures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import skops.io
from ruamel.yaml import YAML
from sklearn.ensemble import HistGradientBoostingClassifier

from modelctl.core.formats.skops import normalise
from modelctl.core.state import load_model
from modelctl.repo import dvcstore
from pipeline.common import load_artifact, load_dataset
from pipeline.datasets import generate
from tests import pipeline_repo
from tests.pipeline_repo import MODEL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline_repo.template(tmp_path_factory)


def test_normalised_skops_bytes_do_not_depend_on_object_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 4)), rng.integers(0, 2, 300)
    model = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, y)
    twin = copy.deepcopy(model)

    saved = normalise(skops.io.dumps(model))

    assert saved == normalise(skops.io.dumps(twin))
    (tmp_path / "model.skops").write_bytes(saved)
    monkeypatch.chdir(ROOT)  # stages run from the repository root, where the allow-list is
    loaded = load_artifact(tmp_path / "model.skops")
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_artifact_loads_with_the_recorded_trusted_types_and_scores_the_test_set(template: Path) -> None:
    record = pipeline_repo.record(template, "v1.1.0")
    artifact = template / ".dvc/cache" / dvcstore.object_path(record.artifact.md5)
    data = load_dataset(template / "data" / MODEL)

    model = skops.io.load(artifact, trusted=record.artifact.trusted_types)

    scores = model.predict_proba(data.X_test)[:, 1]
    assert scores.shape == data.y_test.shape
    assert record.metrics["auc_roc"] > 0.8
    metrics = json.loads((template / "metrics" / f"{MODEL}.json").read_text())
    assert metrics == record.metrics
    roc = json.loads((template / "plots" / MODEL / "roc.json").read_text())["roc"]
    assert (roc[0], roc[-1]) == ({"fpr": 0.0, "tpr": 0.0}, {"fpr": 1.0, "tpr": 1.0})


@pytest.mark.parametrize("model", ["fraud-detection", "churn"])
def test_generated_data_fits_the_model_signature(model: str) -> None:
    params = YAML(typ="safe").load((ROOT / "params.yaml").read_text())["models"][model]["data"]
    options = {k: v for k, v in params.items() if k not in ("generator", "rows", "seed", "test_size")}
    signature = load_model(ROOT, model).signature

    table = generate(params["generator"], rows=2000, seed=1, **options)

    assert [f.name for f in table.features] == signature.names
    for column, feature in zip(table.X.T, signature.features, strict=True):
        low = feature.min if feature.min is not None else 0
        high = feature.max if feature.max is not None else 1
        assert low <= column.min(), feature.name
        assert column.max() <= high, feature.name
        if feature.type != "float":
            assert np.array_equal(column, np.round(column)), feature.name
    assert 0 < table.y.mean() < 0.5
