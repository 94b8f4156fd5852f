"""Compiled inference equals the format's own library within the tolerance, for every registered
version of every format, and a model the compiler cannot match is served by its library, saying so."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.ensemble import HistGradientBoostingClassifier

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette prefers httpx2; the httpx it falls back to works the same
    from starlette.testclient import TestClient

from modelctl.core import drift, formats
from modelctl.core.schema import Output
from modelctl.core.servingspec import PROFILE_FILE, ServingSpec
from modelctl.core.state import load_state
from modelctl.repo import registry
from serving.app import create_app
from serving.compiled import reference_rows
from serving.formats import RUNTIMES
from serving.model import load_model
from serving.monitor import load_profile
from serving.options import Settings
from serving.server import build
from tests import pipeline_repo
from tests.test_serving_helpers import SIGNATURE, Version, served
from tests.test_serving_helpers import reference_rows as signature_rows

__all__ = ["served"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline test repository with a version in every format (skops, XGBoost, LightGBM,
    ONNX), every version pushed to its DVC remote."""
    return pipeline_repo.formats_template(tmp_path_factory)


def fetched_specs(root: Path, folder: Path) -> list[ServingSpec]:
    """Every registered version, fetched from the DVC remote into its own folder."""
    specs = []
    for model in load_state(root).models.values():
        for version, record in model.versions.items():
            target = folder / model.name / version
            registry.fetch_version(
                root,
                model.name,
                version,
                out=target / formats.FORMATS[record.artifact.format].file_name,
                profile_out=target / PROFILE_FILE,
                remote=str(pipeline_repo.remote(root)),
            )
            specs.append(ServingSpec.from_record(model, version, str(target)))
    return specs


# The compiled engine of each registered version's format (fraud-detection's are tree ensembles).
ENGINES = {"skops": "treelite", "xgboost": "treelite", "lightgbm": "treelite", "onnx": "onnxruntime"}


def test_every_registered_version_is_compiled_within_the_tolerance(registered: Path, tmp_path: Path) -> None:
    specs = fetched_specs(registered, tmp_path)
    assert {(s.model, s.format) for s in specs} == {
        ("fraud-detection", "skops"),
        ("fraud-detection", "xgboost"),
        ("fraud-detection", "lightgbm"),
        ("churn", "onnx"),
    }
    for spec in specs:
        profile = load_profile(spec)
        model = load_model(spec, reference_rows(profile, spec.signature))
        native = formats.FORMATS[spec.format].read(
            Path(spec.artifact_path).read_bytes(), spec.trusted_types, spec.artifact_path
        )
        metadata = model.metadata()
        assert (metadata["engine"], metadata["fallback_from"]) == (ENGINES[spec.format], None), spec
        tolerance = RUNTIMES[spec.format].tolerance
        assert metadata["parity_error"] <= tolerance
        rows = reference_rows(profile, spec.signature, seed=99)  # rows the start-up check did not see
        difference = np.abs(model.predict_proba(rows) - native.predict_proba(rows)).max()
        assert difference <= tolerance, (spec.model, spec.version, difference)
        # The tree formats equal their library exactly; ONNX's float32 engines differ in the last bits.
        assert (difference == 0) == (spec.format != "onnx"), (spec.format, difference)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Version:
    """A real model treelite imports but does not match: a 3-class HistGradientBoosting, whose
    softmax differs from scikit-learn's by ~1e-8."""
    folder = tmp_path_factory.mktemp("three")
    rows = signature_rows(2_000, seed=0)
    labels = np.digitize(rows[:, 0] / 400 + 3 * rows[:, 2], [0.9, 1.6])
    estimator = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(rows, labels)
    artifact = skops.io.dumps(estimator)
    (folder / "model.skops").write_bytes(artifact)
    drift.fit_profile(rows, SIGNATURE.names, categorical=["is_foreign"]).save(folder / PROFILE_FILE)
    spec = ServingSpec(
        model="risk",
        version="v1.0.0",
        artifact_path=str(folder / "model.skops"),
        sha256=hashlib.sha256(artifact).hexdigest(),
        format="skops",
        trusted_types=tuple(skops.io.get_untrusted_types(data=artifact)),
        signature=SIGNATURE,
        output=Output(classes=["low", "medium", "high"], positive_class="high"),
        profile_path=str(folder / PROFILE_FILE),
        profile_sha256=hashlib.sha256((folder / PROFILE_FILE).read_bytes()).hexdigest(),
    )
    return Version(spec, estimator, rows)


def test_a_model_the_compiler_cannot_match_is_served_by_sklearn_saying_so(
    three_classes: Version, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="serving"):
        server = build(three_classes.spec, Settings(drift_interval_s=3600))
    assert server.model.metadata()["engine"] == "sklearn"
    assert "serving with sklearn, not treelite: its probabilities differ from sklearn's" in caplog.text
    rows = three_classes.rows[:50]
    np.testing.assert_array_equal(
        server.model.predict_proba(rows), three_classes.estimator.predict_proba(rows)
    )
    with TestClient(create_app(server)) as client:
        metrics = client.get("/metrics").text
    assert (
        'model_engine_info{engine="sklearn",fallback_from="treelite",model="risk",version="v1.0.0"} 1.0'
        in metrics
    )


def test_a_tolerance_the_compiled_engine_meets_serves_it(served: Version) -> None:
    profile = load_profile(served.spec)
    rows = reference_rows(profile, served.spec.signature)
    assert load_model(served.spec, rows).metadata()["engine"] == "treelite"
    forced = load_model(served.spec, rows, tolerance=-1.0)  # no difference is below it
    assert forced.metadata()["engine"] == "sklearn"
    assert "tolerance -1" in forced.metadata()["reason"]


def test_reference_rows_cover_the_profile_and_the_signature(served: Version) -> None:
    rows = reference_rows(load_profile(served.spec), served.spec.signature)
    assert rows.shape[1] == 4
    assert rows[:, 0].max() == 10_000.0  # the signature's max amount, beyond what training saw
    assert set(np.unique(rows[:, 3])) == {0.0, 1.0}
