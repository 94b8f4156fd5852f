"""The registry operations: register a version, deprecate or revoke it; the dvc.lock check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelctl.core.errors import UserError, collect
from modelctl.core.schema import Status
from modelctl.repo import dvcstore, gitutil, registry
from modelctl.repo.registry import Bump, Registered, Say


def check_lock(root: Path) -> None:
    """Refuse a dvc.lock that records other code or params than the working tree holds.

    Otherwise `register` refuses and outputs pulled from the remote belong to other code.

    Raises
    ------
    UserError, UserErrors
        One line per stale file, naming the stages that recorded it.
    """
    stale = dvcstore.stale_lock_deps(root, gitutil.tracked_files(root))
    collect(
        [
            UserError(
                dvcstore.LOCK_FILE,
                f"{'stages' if len(stages) > 1 else 'stage'} {', '.join(stages)} recorded another {path} "
                "than the working tree holds",
                "run `dvc repro` and commit dvc.lock",
            )
            for path, stages in sorted(stale.items())
        ]
    )


@dataclass(frozen=True)
class StatusChange:
    """A version's new status, and the commit recording it (None when not committed)."""

    model: str
    version: str
    status: Status
    commit: str | None


def register(
    root: Path,
    model: str,
    *,
    version: str | None = None,
    bump: Bump | None = None,
    commit: bool = True,
    say: Say = registry.quiet,
    lock_timeout: float | None = None,
) -> Registered:
    """Record the committed, up-to-date pipeline run of `model` as a new version; the
    parameters, result and errors are those of `modelctl.repo.registry.register`."""
    return registry.register(
        root, model, version=version, bump=bump, commit=commit, say=say, lock_timeout=lock_timeout
    )


def deprecate(
    root: Path, model: str, version: str, *, commit: bool = True, lock_timeout: float | None = None
) -> StatusChange:
    """Deprecate a version: it keeps the traffic it has, and gains none."""
    made = registry.set_status(root, model, version, "deprecated", commit=commit, lock_timeout=lock_timeout)
    return StatusChange(model, version, "deprecated", made)


def revoke(
    root: Path, model: str, version: str, *, commit: bool = True, lock_timeout: float | None = None
) -> StatusChange:
    """Revoke a version no stack names any more; revoked is final.

    Raises
    ------
    UserErrors
        One line per stack still naming the version, with the rollback that frees it.
    """
    made = registry.set_status(root, model, version, "revoked", commit=commit, lock_timeout=lock_timeout)
    return StatusChange(model, version, "revoked", made)
