"""Compiled inference, used only where it equals the format's own library.

Tree ensembles (scikit-learn's, XGBoost's, LightGBM's) are imported into treelite and
predicted by its GTIL runtime (no compiler at run time; one row costs ~32 µs instead of
~420 µs for a 150-tree HistGradientBoosting on a quiet machine). Tree inference is a
library's job, not this project's: a faster evaluator of our own (QuickScorer's bitvector
tables) was measured at ~1/3 of GTIL's time for small batches and left out for that reason;
logistic regressions, with a StandardScaler before them folded in, become one matrix
product; ONNX graphs run on onnxruntime (serving/formats/onnx.py). At start-up the compiled
predictor's probabilities are compared with the native library's on reference rows; if they
differ by more than the tolerance anywhere, the native library itself serves and the reason
is logged and exported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from modelctl.core.drift import Profile
from modelctl.core.formats.base import class_columns
from modelctl.core.schema import Signature
from serving.loader import Matrix

log = logging.getLogger("serving")
Predictor = Callable[[Matrix], Matrix]
# Reference rows per source (the profile's values, the signature's ranges).
ROWS_PER_SOURCE = 256


@dataclass(frozen=True)
class Engine:
    """What predicts: `name` (a compiled engine such as "treelite", or the format's native
    library such as "sklearn"), and, when the native library serves although a compiled
    engine exists for the model, the engine it replaces and why."""

    name: str
    predict_proba: Predictor
    parity_error: float  # max |compiled - native| on the reference rows; NaN when the native library serves
    fallback_from: str = ""
    reason: str = ""


@dataclass(frozen=True)
class CompiledRuntime:
    """A format's runtime (serving/formats): its engine, and what the OIP metadata calls it."""

    platform: str
    engine: Engine
    details: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, rows: Matrix) -> Matrix:
        return self.engine.predict_proba(rows)

    def metadata(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "engine": self.engine.name,
            **self.details,
            "parity_error": self.engine.parity_error,
            "fallback_from": self.engine.fallback_from or None,
            "reason": self.engine.reason or None,
        }


def reference_rows(profile: Profile, signature: Signature, seed: int = 0) -> Matrix:
    """Rows for the parity check, shape (2 × ROWS_PER_SOURCE + 2, features): values the profile
    saw (its sketch points, which include each feature's minimum and maximum), values drawn
    uniformly over the signature's ranges (served too, flagged), and the two extremes."""
    rng = np.random.default_rng(seed)
    seen, spread, low, high = [], [], [], []
    for feature in signature.features:
        values = profile.sketch(feature.name).values
        values = values if values.size else np.zeros(1)
        lower = feature.min if feature.min is not None else float(values.min())
        upper = feature.max if feature.max is not None else float(values.max())
        seen.append(rng.choice(values, ROWS_PER_SOURCE))
        uniform = rng.uniform(lower, upper, ROWS_PER_SOURCE)
        spread.append(np.round(uniform) if feature.type != "float" else uniform)
        low.append(lower)
        high.append(upper)
    rows = np.vstack([np.column_stack(seen), np.column_stack(spread), [low, high]])
    return np.ascontiguousarray(rows, dtype=np.float64)


def gtil(model: Any) -> Predictor:
    """A treelite model's probabilities by GTIL, one thread: (rows, features) -> (rows, classes)."""
    from treelite.gtil.gtil import GTILConfig, _predict_impl

    # treelite.gtil.predict parses a JSON configuration on every call (a third of a small
    # batch's time); this is its body with the configuration parsed once. The version is
    # pinned, and the start-up parity check catches any change in behaviour.
    config = GTILConfig(nthread=1, predict_type="default")

    def predict_proba(rows: Matrix) -> Matrix:
        return class_columns(_predict_impl(model, rows, config=config).reshape(len(rows), -1))

    return predict_proba


def _treelite(estimator: Any) -> Predictor | None:
    import treelite.sklearn

    try:
        model = treelite.sklearn.import_model(estimator)
    except Exception as exc:  # noqa: BLE001 — the importer raises many kinds for what it does not cover
        log.debug("treelite cannot import a %s: %s", type(estimator).__name__, exc)
        return None
    return gtil(model)


def _linear(estimator: Any) -> Predictor | None:
    """A logistic regression, optionally after a StandardScaler, as one matrix product."""
    steps = [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
    if not isinstance(steps[-1], LogisticRegression) or len(steps) > 2:
        return None
    regression = steps[-1]
    weights = np.asarray(regression.coef_, dtype=np.float64).T  # (features, 1 or classes)
    bias = np.asarray(regression.intercept_, dtype=np.float64)
    if len(steps) == 2:
        scaler = steps[0]
        if not isinstance(scaler, StandardScaler):
            return None
        scale = scaler.scale_ if scaler.scale_ is not None else np.ones(len(weights))
        mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(len(weights))
        weights = weights / scale[:, None]
        bias = bias - mean @ weights
    weights, bias = np.ascontiguousarray(weights), np.ascontiguousarray(bias)

    if weights.shape[1] == 1:

        def predict_proba(rows: Matrix) -> Matrix:
            positive = 1.0 / (1.0 + np.exp(-(rows @ weights + bias)))
            return np.column_stack((1.0 - positive[:, 0], positive[:, 0]))

        return predict_proba

    def softmax(rows: Matrix) -> Matrix:
        scores = rows @ weights + bias
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        result: Matrix = scores / scores.sum(axis=1, keepdims=True)
        return result

    return softmax


COMPILERS: dict[str, Callable[[Any], Predictor | None]] = {"treelite": _treelite, "numpy": _linear}


def compile_estimator(estimator: Any, rows: Matrix, tolerance: float) -> Engine:
    """The fastest engine whose probabilities equal `estimator.predict_proba`'s within `tolerance`
    (max absolute difference) on `rows`; else the estimator itself."""
    candidates = [(name, partial(compiler, estimator)) for name, compiler in COMPILERS.items()]
    return fastest("sklearn", estimator.predict_proba, candidates, rows, tolerance)


def fastest(
    native_name: str,
    native: Predictor,
    candidates: Sequence[tuple[str, Callable[[], Predictor | None]]],
    rows: Matrix,
    tolerance: float,
) -> Engine:
    """The first candidate engine that applies (its maker returns a predictor, not None) if its
    probabilities equal `native`'s within `tolerance` (max absolute difference) on `rows`;
    else `native`, saying which engine failed and why (a maker that raises fails too)."""
    for name, make in candidates:
        try:
            predictor = make()
        except Exception as exc:  # noqa: BLE001 — a compiler failing for any reason leaves the native library
            reason = (
                f"it could not compile the model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            )
            return Engine(native_name, native, math.nan, fallback_from=name, reason=reason)
        if predictor is None:
            continue
        try:
            error = float(np.max(np.abs(predictor(rows) - native(rows))))
        except (ValueError, TypeError, IndexError, RuntimeError) as exc:
            error, why = math.inf, f"it failed on the reference rows ({exc})"
        else:
            why = f"its probabilities differ from {native_name}'s by up to {error:.3g}"
        if error <= tolerance:
            return Engine(name, predictor, error)
        reason = f"{why} on {len(rows)} reference rows (tolerance {tolerance:g})"
        return Engine(native_name, native, math.nan, fallback_from=name, reason=reason)
    return Engine(native_name, native, math.nan)
