"""The model server that runs in every model pod: verified loading, batched predictions,
a JSON `/predict` API, the Open Inference Protocol v2, Prometheus metrics, online drift
and ground-truth feedback.

It depends only on the serving extras and the modelctl core (schema, servingspec, drift,
errors), so the serving image stays small.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version


def _build() -> str:
    # The image sets MODELCTL_BUILD to its git describe; a local checkout reports the package version.
    if os.environ.get("MODELCTL_BUILD"):
        return os.environ["MODELCTL_BUILD"]
    try:
        return version("modelctl")
    except PackageNotFoundError:
        return "unknown"


BUILD = _build()
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_threads() -> None:
    """One OpenMP/BLAS thread unless told otherwise; call it before scikit-learn is imported.

    On a few cores, HistGradientBoosting opens a parallel region per tree, which costs far
    more than it saves on small batches (a Flask server with library defaults fell to 4 req/s).
    """
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")
