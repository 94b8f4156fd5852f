"""Loading refuses anything the registry record does not vouch for, before deserializing it."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io

from modelctl.core.errors import UserError
from modelctl.core.schema import Output
from serving.compiled import reference_rows as parity_rows
from serving.model import load_model
from serving.monitor import load_profile
from tests.test_serving_helpers import Version, copy_version, reference_rows, served

__all__ = ["served"]
ROWS = reference_rows(50, seed=3)


@pytest.fixture
def version(served: Version, tmp_path: Path) -> Version:
    return copy_version(served, tmp_path)


def test_loads_a_verified_artifact(served: Version) -> None:
    model = load_model(served.spec, parity_rows(load_profile(served.spec), served.spec.signature))
    rows = reference_rows(20, seed=1)
    np.testing.assert_allclose(
        model.predict_proba(rows), served.estimator.predict_proba(rows), rtol=0, atol=1e-9
    )
    assert model.metadata()["engine"] == "treelite"
    assert model.classes == ("legit", "fraud")
    assert model.positive_index == 1


def test_a_tampered_artifact_is_refused_before_deserializing(
    version: Version, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(version.spec.artifact_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    deserialized: list[Any] = []
    monkeypatch.setattr(skops.io, "loads", lambda *a, **k: deserialized.append(a))

    with pytest.raises(UserError, match=r"sha256 is \w+, the registry record says \w+; refusing to load it"):
        load_model(version.spec, ROWS)
    assert deserialized == []


def test_a_missing_artifact_is_one_clear_error(version: Version) -> None:
    Path(version.spec.artifact_path).unlink()
    with pytest.raises(UserError, match="cannot read the artifact"):
        load_model(version.spec, ROWS)


def test_types_the_record_does_not_trust_are_refused(version: Version) -> None:
    with pytest.raises(UserError, match=r"does not trust: sklearn\.ensemble\._hist_gradient_boosting"):
        load_model(dataclasses.replace(version.spec, trusted_types=()), ROWS)


def test_only_the_format_tables_formats_are_served(version: Version) -> None:
    with pytest.raises(UserError, match="format 'pmml' is not served by this server"):
        load_model(dataclasses.replace(version.spec, format="pmml"), ROWS)


@pytest.mark.parametrize(
    ("fmt", "library"), [("xgboost", "XGBoost"), ("lightgbm", "LightGBM"), ("onnx", "ONNX")]
)
def test_a_skops_file_recorded_as_another_format_is_refused_in_one_line(
    version: Version, fmt: str, library: str
) -> None:
    with pytest.raises(UserError) as refused:
        load_model(dataclasses.replace(version.spec, format=fmt, trusted_types=()), ROWS)
    assert len(str(refused.value).splitlines()) == 1
    assert f"is not a readable {library} model" in str(refused.value) or (
        f"is not a complete {library}" in str(refused.value)
    )


def test_a_model_whose_classes_differ_from_the_output_is_refused(version: Version) -> None:
    three = Output(classes=["legit", "fraud", "unsure"], positive_class="fraud")
    with pytest.raises(UserError, match="the model has 2 classes, the output lists 3"):
        load_model(dataclasses.replace(version.spec, output=three), ROWS)


def test_a_model_taking_other_features_is_refused(version: Version) -> None:
    signature = version.spec.signature.model_copy(update={"features": version.spec.signature.features[:3]})
    with pytest.raises(UserError, match="the model takes 4 features, the signature lists 3"):
        load_model(dataclasses.replace(version.spec, signature=signature), ROWS)


def test_a_tampered_profile_is_refused(version: Version) -> None:
    Path(version.spec.profile_path).write_bytes(b"not the profile")
    with pytest.raises(UserError, match="reference profile sha256"):
        load_profile(version.spec)


def test_the_profile_loads_when_verified(version: Version) -> None:
    profile = load_profile(version.spec)
    assert (
        hashlib.sha256(Path(version.spec.profile_path).read_bytes()).hexdigest()
        == version.spec.profile_sha256
    )
    assert not profile.out_of_range(version.rows[:10]).any()
