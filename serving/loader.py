"""The shared path every served file takes: its sha256 is verified before anything parses it.

Format-specific code (serving/formats/) only ever receives bytes that passed this check.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelctl.core.errors import UserError

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
