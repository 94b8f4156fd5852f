"""A genuinely broken model version, for the local stack's tests and `make demo`.

Nothing is mocked: the version is a real scikit-learn model, stored in the DVC remote and
registered like any other, that the server loads and warms up; it then fails (500) on real rows.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from modelctl.core import yamlio
from modelctl.core.formats import FORMATS
from modelctl.core.schema import Version
from modelctl.repo import dvcstore

# The broken version of the test repository (tests/pipeline_repo.py: v1.0.0 and v1.1.0).
BROKEN = "v1.2.0"


def add_broken_version(
    root: Path, remote: Path, model: str = "fraud-detection", version: str | None = None
) -> str:
    """Register `version` of `model` (default: the next minor version): fitted on one row only,
    with an encoder that refuses unseen values, so it loads and passes the server's warm-up,
    then fails on real rows. Its artifact goes to `remote`; its record is v1.1.0's with that
    skops artifact (not committed here). Returns the version."""
    model_file = root / "models" / model / "model.yaml"
    doc = yamlio.load(model_file)
    version = version or Version(max(doc["versions"], key=Version)).bump("minor").name
    middle = [
        (f["min"] + f["max"]) / 2 if "min" in f and "max" in f else 0.0 for f in doc["signature"]["features"]
    ]
    estimator = make_pipeline(OneHotEncoder(handle_unknown="error"), LogisticRegression())
    estimator.fit(np.array([middle, middle]), np.array([0, 1]))
    data = skops.io.dumps(estimator)
    artifact = root.parent / "broken.skops"
    artifact.write_bytes(data)
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    sha256 = hashlib.sha256(data).hexdigest()
    dvcstore.push(artifact, dvcstore.Location.of(str(remote)), md5, sha256)
    record = json.loads(json.dumps(doc["versions"]["v1.1.0"]))
    record["artifact"].update(
        path=f"artifacts/{model}/{FORMATS['skops'].file_name}",
        format="skops",
        md5=md5,
        sha256=sha256,
        size=len(data),
        trusted_types=skops.io.get_untrusted_types(data=data),
    )
    doc["versions"][version] = record
    yamlio.dump_file(model_file, doc)
    return version


if __name__ == "__main__":
    # make demo: python -m tests.faults REPOSITORY REMOTE; prints the version it added
    print(add_broken_version(Path(sys.argv[1]), Path(sys.argv[2])))
