"""LightGBM's text model, served by treelite's GTIL where it equals LightGBM's own predictions."""

from __future__ import annotations

from modelctl.core.formats import FORMATS
from modelctl.core.servingspec import ServingSpec
from serving.compiled import CompiledRuntime, fastest, gtil
from serving.loader import Matrix, read_native

FORMAT = FORMATS["lightgbm"]


def load(data: bytes, spec: ServingSpec, reference_rows: Matrix, tolerance: float) -> CompiledRuntime:
    """The Booster in `data` (already verified and its text checked), compiled by treelite."""
    import treelite.frontend

    model = read_native(FORMAT, data, spec)
    engine = fastest(
        "lightgbm",
        model.predict_proba,
        [("treelite", lambda: gtil(treelite.frontend.from_lightgbm(model.native)))],
        reference_rows,
        tolerance,
    )
    return CompiledRuntime("lightgbm", engine)
