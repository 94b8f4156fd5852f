"""The shared path every served file takes: its sha256 is verified before anything parses it.

Format-specific code (serving/formats/) only ever receives bytes that passed this check.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelctl.core.errors import UserError
from modelctl.core.formats import ArtifactFormat, Loaded, check
from modelctl.core.servingspec import ServingSpec

Matrix = npt.NDArray[np.float64]
FIX_RECORD = "fetch it again with 'modelctl fetch' or check the registry record"


def read_verified(path: str, sha256: str, what: str) -> bytes:
    """The file's bytes, read once, only if they hash to `sha256`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(path, f"cannot read the {what}: {exc.strerror}", FIX_RECORD) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise UserError(
            path,
            f"{what} sha256 is {actual}, the registry record says {sha256}; refusing to load it",
            FIX_RECORD,
        )
    return data


def read_native(fmt: ArtifactFormat, data: bytes, spec: ServingSpec) -> Loaded:
    """Verified bytes read by the format's own library (trusting only the record's types),
    checked against the spec's signature and output; UserError, one line, otherwise."""
    model = fmt.read(data, spec.trusted_types, spec.artifact_path)
    problem = check(model, spec.signature.names, spec.output.classes)
    if problem is not None:
        raise UserError(spec.artifact_path, problem.problem, problem.fix)
    return model
