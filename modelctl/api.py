"""The Python API under the CLI: one function per release and registry operation.

Each function takes typed arguments, runs the transaction of `modelctl.repo.transaction`
(validate → edit → policies → one commit, or nothing changes) and returns what it did as data;
the CLI (`modelctl.cli`) only parses arguments and prints these results. Errors are
`modelctl.core.errors.UserError` / `UserErrors`, one line per problem.

Why here, beside the CLI and not in `modelctl/repo/`: the default policy check renders the
stack's objects (`infra`) and runs the policy rules (`policies`). `repo/` may not import those
shells, so the transaction takes the check as a parameter; this module, an outer layer like the
CLI, supplies the real one (imported lazily, so `modelctl fetch` in the serving image starts
without them). Pass `policies=` to use another check.

Example::

    from pathlib import Path
    from modelctl import api

    change = api.canary(Path("."), "fraud-detection", "v1.1.0", stack="staging")
    print(change.commit, change.release.traffic)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from modelctl.core import releases
from modelctl.core.errors import UserError, collect
from modelctl.core.schema import Status
from modelctl.core.state import State, stack_file
from modelctl.repo import dvcstore, gitutil, registry
from modelctl.repo.registry import Bump, Registered, Say
from modelctl.repo.transaction import PolicyCheck, ReleaseChange, apply_release

__all__ = [
    "ReleaseChange",
    "StatusChange",
    "ab",
    "bluegreen",
    "bluegreen_switch",
    "canary",
    "check_policies",
    "clear_hold",
    "deprecate",
    "promote",
    "register",
    "revoke",
    "rollback",
    "shadow",
    "shadow_off",
]


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


def check_policies(state: State, stack: str) -> int:
    """Run every policy on the stack's rendered objects.

    Returns
    -------
    int
        How many objects were checked.

    Raises
    ------
    UserError, UserErrors
        One line per violation.
    """
    # Imported here, not at the top: the serving image runs `modelctl fetch` without these shells.
    from infra.build import build_stack
    from policies.rules import check_objects

    objects = build_stack(state, stack)
    collect(
        [
            UserError(stack_file(stack), f"policy {violation}", violation.fix)
            for violation in check_objects(objects, state)
        ]
    )
    return len(objects)


# ---------------------------------------------------------------- release operations
# Every one takes: root (the repository), stack (the stack file to change), dry_run (compute
# the change and its diff only), commit (False: write the stack file, do not commit),
# policies (the check run on the new state) and lock_timeout (seconds to wait for another
# writer, see modelctl.repo.transaction.repository_lock); each returns a ReleaseChange.


def canary(
    root: Path,
    model: str,
    version: str,
    *,
    stack: str,
    weight: int | None = None,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """Start a canary of `version`, or move it to the next analysis step.

    Parameters
    ----------
    weight
        The canary's share of traffic in percent (1-99) instead of the next step of the
        release's analysis settings.
    """
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.canary(t, r, version, weight),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


def promote(
    root: Path,
    model: str,
    *,
    stack: str,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """The canary takes 100% of traffic; the old stable version stays deployed at 0%."""
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.promote(t, r),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


def ab(
    root: Path,
    model: str,
    *,
    stack: str,
    split: Mapping[str, int],
    sticky: bool = False,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """Split traffic between versions for an A/B experiment.

    Parameters
    ----------
    split
        Version -> percent of traffic, summing to 100.
    sticky
        Keep each user on one version by cookie.
    """
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.ab(t, r, split, sticky),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


def shadow(
    root: Path,
    model: str,
    version: str,
    *,
    stack: str,
    percent: float,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """Mirror `percent` (above 0, at most 100) of requests to `version`, discarding its responses."""
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.shadow(t, r, version, percent),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


def shadow_off(
    root: Path,
    model: str,
    *,
    stack: str,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """Stop mirroring."""
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.shadow_off(t, r),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


def bluegreen(
    root: Path,
    model: str,
    version: str,
    *,
    stack: str,
    mirror: float | None = None,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """Deploy the green `version` at 0% next to the stable one, optionally mirroring `mirror` percent to it."""
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.bluegreen(t, r, version, mirror),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


def bluegreen_switch(
    root: Path,
    model: str,
    *,
    stack: str,
    version: str | None = None,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """Move all traffic to the green version (default: the newest deployed at 0%)."""
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.bluegreen_switch(t, r, version),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


def rollback(
    root: Path,
    model: str,
    *,
    stack: str,
    to: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """All traffic back to the stable version the release started from; the versions it leaves
    are held on the stack. Already there: nothing changes (`changed` False), not an error.

    Parameters
    ----------
    to
        Roll back to this version instead (registered, not revoked, not held here).
    reason
        Recorded with each hold (default: "rolled back to <version>").
    """
    now = datetime.now(UTC).replace(microsecond=0)
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.rollback(t, r, now, to, reason),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


def clear_hold(
    root: Path,
    model: str,
    version: str,
    *,
    stack: str,
    reason: str,
    dry_run: bool = False,
    commit: bool = True,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> ReleaseChange:
    """Lift the hold a rollback put on `version` on `stack`, saying why (`reason`, required).

    Commit it through review: automation (the canary analysis) never calls this.
    """
    return apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.clear_hold(t, r, version, reason),
        policies=policies,
        dry_run=dry_run,
        commit=commit,
        lock_timeout=lock_timeout,
    )


# ---------------------------------------------------------------- registry operations


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
    """Record the committed, up-to-date pipeline run of `model` as a new version.

    Parameters
    ----------
    version
        The new version's name (default: the next by `bump`, or a minor bump).
    bump
        Which part of the newest version to increase: "major", "minor" or "patch".
    commit
        Commit the model file (False: write it only).
    say
        Progress callback, one line at a time.

    Raises
    ------
    UserError
        The pipeline run is not committed, not up to date with dvc.lock, or its artifact is
        already registered; or the version name is taken.
    """
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
