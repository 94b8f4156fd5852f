"""XGBoost's model file, served by treelite's GTIL where it equals XGBoost's own predictions.

XGBoost starts each row's sum at the base margin and adds the trees' leaves to it in float32,
in tree order; treelite adds the base margin after the trees. Floating-point addition is not
associative, so the two differ in the last bits (1.8e-7 in probability on fraud-detection
v1.2.0's reference rows) wherever the base margin is not zero (XGBoost >= 2 fits it to the
labels). Folding the base margin into the leaves of each class's first tree, in float32, and
giving treelite a zero base makes it add the same numbers in the same order: parity exact.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from modelctl.core.formats import FORMATS
from modelctl.core.servingspec import ServingSpec
from serving.compiled import CompiledRuntime, fastest, gtil
from serving.loader import Matrix, read_native

FORMAT = FORMATS["xgboost"]


def load(data: bytes, spec: ServingSpec, reference_rows: Matrix, tolerance: float) -> CompiledRuntime:
    """The Booster in `data` (already verified), checked against the spec, compiled by treelite."""
    model = read_native(FORMAT, data, spec)
    engine = fastest(
        "xgboost",
        model.predict_proba,
        [("treelite", lambda: gtil(treelite_model(model.native)))],
        reference_rows,
        tolerance,
    )
    return CompiledRuntime("xgboost", engine)


def treelite_model(booster: Any) -> Any:
    """treelite's import of `booster` with its base margin folded into each class's first tree."""
    import treelite.frontend

    model = json.loads(bytes(booster.save_raw(raw_format="json")))
    learner = model["learner"]
    logistic = learner["objective"]["name"] == "binary:logistic"
    recorded = json.loads(learner["learner_model_param"]["base_score"])  # "[0.5]" since XGBoost 3, else "0.5"
    scores = [np.float32(s) for s in (recorded if isinstance(recorded, list) else [recorded])]
    # XGBoost's ProbToMargin for binary:logistic, in float32 like XGBoost; softprob's is the identity.
    margins = [-np.log(np.float32(1) / s - np.float32(1)) if logistic else s for s in scores]
    trees = learner["gradient_booster"]["model"]["trees"]
    groups = learner["gradient_booster"]["model"]["tree_info"]
    for group in sorted(set(groups)):
        margin = margins[group if len(margins) > 1 else 0]
        tree = trees[groups.index(group)]
        for node, left in enumerate(tree["left_children"]):
            if left == -1:  # a leaf: split_conditions holds its value (XGBoost's JSON model schema)
                value = float(np.float32(tree["split_conditions"][node]) + margin)
                tree["split_conditions"][node] = tree["base_weights"][node] = value
    neutral = np.float32(0.5 if logistic else 0.0)  # a zero margin
    neutral_scores = [float(neutral)] * len(scores)
    learner["learner_model_param"]["base_score"] = json.dumps(
        neutral_scores if isinstance(recorded, list) else neutral_scores[0]
    )
    return treelite.frontend.from_xgboost_json(json.dumps(model))
