"""Stage `profile@<model>`: the reference profile the server's drift detection compares against.

The reference is the held-out test split with the model's scores on it: data the model did
not fit, scored the way live traffic will be.
"""

from __future__ import annotations

from modelctl.core.drift.profile import Profile, fit_profile
from pipeline.common import Paths, load_artifact, load_dataset, model_from_argv


def profile(model: str) -> Profile:
    paths = Paths(model)
    data = load_dataset(paths.data)
    scores = load_artifact(paths.artifact).predict_proba(data.X_test)[:, 1]
    return fit_profile(data.X_test, data.features, scores=scores, categorical=data.categorical)


if __name__ == "__main__":
    name = model_from_argv()
    Paths(name).profile.parent.mkdir(parents=True, exist_ok=True)
    profile(name).save(Paths(name).profile)
