"""The release operations: one function each, on one stack file, through the transaction.

Every one takes root (the repository), stack (the stack file to change) and the
`TransactionOptions`, and returns a `ReleaseChange` (see `modelctl.api`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack

from modelctl.core import releases
from modelctl.core.errors import UserError, collect
from modelctl.core.releases import Proposal
from modelctl.core.state import State, stack_file
from modelctl.repo.transaction import Build, PolicyCheck, ReleaseChange, apply_release


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


class TransactionOptions(TypedDict, total=False):
    """What every release operation passes to the transaction (all optional).

    dry_run: compute the change and its diff only (default False). commit: False writes the
    stack file without committing (default True). policies: the check run on the new state
    (default `check_policies`). lock_timeout: seconds to wait for another writer (default:
    `modelctl.repo.transaction.repository_lock`'s).
    """

    dry_run: bool
    commit: bool
    policies: PolicyCheck
    lock_timeout: float | None


def apply(
    root: Path,
    model: str,
    stack: str,
    build: Build,
    options: TransactionOptions,
    *,
    evidence: Mapping[str, str] | None = None,
    message: Callable[[Proposal], str] | None = None,
) -> ReleaseChange:
    """`modelctl.repo.transaction.apply_release` with `options` (their defaults where not given):
    the one way every release operation and every analysis's decision changes a stack file."""
    return apply_release(
        root,
        model,
        stack,
        build,
        policies=options.get("policies", check_policies),
        dry_run=options.get("dry_run", False),
        commit=options.get("commit", True),
        lock_timeout=options.get("lock_timeout"),
        evidence=evidence,
        message=message,
    )


def canary(
    root: Path,
    model: str,
    version: str,
    *,
    stack: str,
    weight: int | None = None,
    evidence: Path | None = None,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Start a canary of `version`, or move it to the next analysis step.

    Parameters
    ----------
    weight
        The canary's share of traffic in percent (1-99) instead of the next step of the
        release's analysis settings.
    evidence
        A shadow report of `version` on `stack` (`modelctl shadow report --json`), committed with
        the change under analysis/<stack>/<model>/ and cited by a `Shadow-Report` trailer.

    Raises
    ------
    UserError
        The evidence is unreadable or reports on another model, version or stack.
    """
    files, message = _shadow_evidence(evidence, model, version, stack) if evidence else (None, None)
    return apply(
        root,
        model,
        stack,
        lambda t, r, _: releases.canary(t, r, version, weight),
        options,
        evidence=files,
        message=message,
    )


def _shadow_evidence(
    evidence: Path, model: str, version: str, stack: str
) -> tuple[dict[str, str], Callable[[Proposal], str]]:
    # Imported only with evidence: it is an analysis's, and a release command loads no
    # analysis code (scipy alone takes half a second to import).
    from modelctl.api.analysis_shadow import shadow_evidence

    return shadow_evidence(evidence, model, version, stack)


def promote(
    root: Path,
    model: str,
    *,
    stack: str,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """The canary takes 100% of traffic; the old stable version stays deployed at 0%."""
    return apply(root, model, stack, lambda t, r, _: releases.promote(t, r), options)


def ab(
    root: Path,
    model: str,
    *,
    stack: str,
    split: Mapping[str, int],
    sticky: bool = False,
    experiment: Mapping[str, Any] | None = None,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Split traffic between two versions for an A/B experiment, with its settings.

    Parameters
    ----------
    split
        Version -> percent of traffic, summing to 100.
    sticky
        Keep each user on one version by cookie.
    experiment
        The experiment's settings (`schema.Experiment` keys: metric, effect, min_duration, ...),
        over those already beside the release; `metric` and `effect` must be set one way
        (`releases.ab`).
    """
    return apply(root, model, stack, lambda t, r, _: releases.ab(t, r, split, sticky, experiment), options)


def shadow(
    root: Path,
    model: str,
    version: str,
    *,
    stack: str,
    percent: float,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Mirror `percent` (above 0, at most 100) of requests to `version`, discarding its responses."""
    return apply(root, model, stack, lambda t, r, _: releases.shadow(t, r, version, percent), options)


def shadow_off(
    root: Path,
    model: str,
    *,
    stack: str,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Stop mirroring."""
    return apply(root, model, stack, lambda t, r, _: releases.shadow_off(t, r), options)


def bluegreen(
    root: Path,
    model: str,
    version: str,
    *,
    stack: str,
    mirror: float | None = None,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Deploy the green `version` at 0% next to the stable one, optionally mirroring `mirror` percent to it."""
    return apply(root, model, stack, lambda t, r, _: releases.bluegreen(t, r, version, mirror), options)


def bluegreen_switch(
    root: Path,
    model: str,
    *,
    stack: str,
    version: str | None = None,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Move all traffic to the green version (default: the newest deployed at 0%)."""
    return apply(root, model, stack, lambda t, r, _: releases.bluegreen_switch(t, r, version), options)


def rollback(
    root: Path,
    model: str,
    *,
    stack: str,
    to: str | None = None,
    reason: str | None = None,
    **options: Unpack[TransactionOptions],
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
    return apply(root, model, stack, lambda t, r, _: releases.rollback(t, r, now, to, reason), options)


def clear_hold(
    root: Path,
    model: str,
    version: str,
    *,
    stack: str,
    reason: str,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Lift the hold a rollback put on `version` on `stack`, saying why (`reason`, required).

    Commit it through review: automation (the canary analysis) never calls this.
    """
    return apply(root, model, stack, lambda t, r, _: releases.clear_hold(t, r, version, reason), options)
