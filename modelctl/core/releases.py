"""Release transitions as pure functions: the current release of a model on a stack and a
command (canary, promote, A/B, shadow, blue-green, rollback) give the next release.

Nothing here reads git, the disk or the clock; the transaction (`modelctl.repo.transaction`)
writes the result. Each transition refuses, with a UserError, what the command must not do.

The state knows where a rollback goes: canary, A/B, shadow and blue-green record the stable
version they start from as the release's `rollback_to`, and promote and the blue-green switch
keep it deployed at weight 0. A rollback sends all traffic there and records the versions it
moved away from under `held`; no transition gives a held version traffic on that stack until
`clear_hold` (a reviewed commit with a reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from modelctl.core import yamlio
from modelctl.core.errors import UserError, collect, revoked_version, unknown_version
from modelctl.core.schema import (
    Experiment,
    Hold,
    ModelFile,
    Release,
    Requires,
    Shadow,
    Sticky,
    Version,
    duration_seconds,
)
from modelctl.core.state import CONFIG_NAMESPACE, pydantic_errors, stack_file

# The release fields a release command may change; replicas, resources and analysis settings
# are edited by hand and survive every command. Overrides change only when a rollback holds
# the version they name.
RELEASE_FIELDS = ("traffic", "shadow", "sticky", "experiment", "overrides", "rollback_to", "held")
CLEAR_HOLD = "release-hold clear"


@dataclass(frozen=True)
class Target:
    """Where a command acts: one model on one stack."""

    model: ModelFile
    stack: str

    @property
    def file(self) -> str:
        return stack_file(self.stack)

    @property
    def key(self) -> str:
        return f"config.{CONFIG_NAMESPACE}:releases.{self.model.name}"

    def refuse(self, problem: str, fix: str, key: str = "") -> UserError:
        return UserError(self.file, problem, fix, key=f"{self.key}.{key}" if key else self.key)


@dataclass(frozen=True)
class Proposal:
    """The next release and the one-line description that becomes the commit message."""

    action: str
    release: Release
    summary: str
    # A rollback returns traffic to a version that served: it skips the soak and deprecation checks.
    restores: bool = False
    # Unchanged is a success, not a refusal: a repeated rollback or hold clearing.
    idempotent: bool = False

    @property
    def message(self) -> str:
        return f"{self.action}: {self.summary}"


# ---------------------------------------------------------------- reading a release


def stable_version(release: Release) -> str:
    """The version a split of `release` started from: the recorded `rollback_to` while it takes
    traffic. For a stack file written before it was recorded, the version carrying the most
    traffic; on a tie, the older one. Never read from version order or weights when recorded:
    an older version can be canaried against a newer stable, at 50% too."""
    if release.rollback_to is not None and release.traffic.get(release.rollback_to, 0) > 0:
        return release.rollback_to
    oldest_first = sorted(release.traffic, key=Version)
    return max(oldest_first, key=release.traffic.__getitem__)


def split_roles(release: Release) -> tuple[str, str] | None:
    """(stable, candidate) of a release in which exactly two versions take traffic (a canary, an
    A/B split), the stable one by `stable_version`; else None. `promote`, `canary analyze`,
    `ab analyze`, `status`, the alert rules and the dashboard all read the roles here."""
    serving = release.serving()
    if len(serving) != 2:
        return None
    stable = stable_version(release)
    (candidate,) = (v for v in serving if v != stable)
    return stable, candidate


def describe_split(release: Release) -> str | None:
    """Who is who in a two-version split, as `status` and the dashboard say it: "canary v1.1.0
    from v1.0.0", "experiment ..." (with `experiment` settings) or "split ..." (sticky, or the
    candidate past half); None unless exactly two versions take traffic."""
    roles = split_roles(release)
    if roles is None:
        return None
    kinds = {"experiment": release.experiment is not None, "canary": canary_split(release) is not None}
    kind = next((name for name, holds in kinds.items() if holds), "split")
    return f"{kind} {roles[1]} from {roles[0]}"


def canary_split(release: Release) -> tuple[str, str] | None:
    """(stable, canary) of a release in a canary state: two versions take traffic, without
    sticky sessions or `experiment` settings (an A/B experiment), the canary at most half; else
    None."""
    roles = split_roles(release)
    if roles is None or release.sticky is not None or release.experiment is not None:
        return None
    return roles if release.traffic[roles[1]] <= 50 else None


def fully_on(release: Release) -> str | None:
    """The version serving all traffic when exactly one does and nothing is mirrored."""
    serving = release.serving()
    return serving[0] if len(serving) == 1 and release.shadow is None else None


def describe_traffic(traffic: Mapping[str, int]) -> str:
    return ", ".join(f"{v} {w}%" for v, w in sorted(traffic.items(), key=lambda vw: Version(vw[0])))


def restores(before: Release | None, after: Release | None) -> bool:
    """Whether going from `before` to `after` only takes traffic back, as `rollback` does: all
    traffic on one version `before` routed to (any weight), nothing mirrored, no version deployed
    that `before` did not deploy, and every other version that served in `before` held. A change
    that only restores may be deployed without waiting for a reviewer; a promotion is not one
    (the stable version it leaves is not held), nor is a change to anything but the release
    fields (RELEASE_FIELDS: replicas, analysis settings...)."""
    if before == after:
        return True
    if before is None or after is None:
        return False
    version = fully_on(after)
    untouched = {f: getattr(before, f) for f in type(before).model_fields if f not in RELEASE_FIELDS}
    return (
        version is not None
        and version in before.traffic
        and set(after.deployed()) <= set(before.deployed())
        and all(v in after.held for v in before.serving() if v != version)
        and after.overrides.items() <= before.overrides.items()
        and after.sticky in (None, before.sticky)
        and after.experiment in (None, before.experiment)
        and after.model_copy(update=untouched) == after
    )


def serves(release: Release | None, version: str) -> bool:
    """Whether `version` takes traffic in `release` (None: not deployed)."""
    return release is not None and release.traffic.get(version, 0) > 0


def gaining_traffic(before: Release, after: Release) -> list[str]:
    """Versions whose live weight rises from `before` to `after`."""
    return [v for v, w in after.traffic.items() if w > before.traffic.get(v, 0)]


# ---------------------------------------------------------------- version checks


def require_registered(target: Target, version: str) -> None:
    """Refuse a version the registry does not know or has revoked."""
    record = target.model.versions.get(version)
    if record is None:
        raise unknown_version(
            target.file, target.model.name, version, target.model.ordered_versions(), target.key
        )
    if record.status == "revoked":
        raise revoked_version(
            target.file, target.model.name, version, "release an active version instead", target.key
        )


def require_not_held(target: Target, release: Release, version: str) -> None:
    """Refuse a version held on this stack since a rollback; the fix names the clearing command."""
    hold = release.held.get(version)
    if hold is not None:
        raise target.refuse(
            f"{version} of {target.model.name} is held on {target.stack} since {hold.since:%Y-%m-%d %H:%M} UTC ({hold.reason}) and may not take traffic",
            f"if it is fit again, clear the hold in a reviewed commit: {clear_hold_command(target, version)}",
            key=f"held.{version}",
        )


def clear_hold_command(target: Target, version: str) -> str:
    return f"modelctl {CLEAR_HOLD} {target.model.name} {version} --stack {target.stack} --reason 'why it is fit again'"


def require_releasable(target: Target, release: Release, version: str) -> None:
    """Refuse a version that is unknown, revoked, or held on this stack."""
    require_registered(target, version)
    require_not_held(target, release, version)


def require_may_gain(target: Target, before: Release, after: Release) -> None:
    """Refuse a deprecated version whose traffic would rise."""
    for version in gaining_traffic(before, after):
        record = target.model.versions.get(version)
        if record is not None and record.status == "deprecated":
            raise target.refuse(
                f"version {version} of {target.model.name} is deprecated and cannot gain traffic",
                "release an active version instead",
                key=f"traffic.{version}",
            )


# ---------------------------------------------------------------- transitions


def canary(target: Target, release: Release, version: str, weight: int | None = None) -> Proposal:
    """Start a canary at the first analysis step, or move it to the next step (or to `weight`).

    Parameters
    ----------
    target : Target
        The model and the stack.
    release : Release
        The current release.
    version : str
        The canary version; must be registered and not revoked.
    weight : int, optional
        The canary's percent of traffic, 1-99.

    Returns
    -------
    Proposal
        The next release and its commit message.

    Raises
    ------
    UserError
        The version is unknown or revoked, the weight is out of range, the release has
        experiment settings, or it has no single stable version for the canary (or the canary
        already leads it).
    """
    require_releasable(target, release, version)
    if release.experiment is not None:
        raise target.refuse(
            "its experiment settings make a two-version split an A/B experiment, which 'canary analyze' never judges",
            f"remove them, or compare the versions with 'modelctl ab {target.model.name} --split ...'",
            key="experiment",
        )
    if weight is not None and not 1 <= weight <= 99:
        raise target.refuse(
            f"canary weight {weight} is outside 1-99",
            "give a weight from 1 to 99, or use 'modelctl promote' for 100",
        )
    stable = _canary_stable(target, release, version)
    current = release.traffic.get(version, 0)
    new_weight = weight if weight is not None else _next_step(target, release, current)
    traffic = {stable: 100 - new_weight, version: new_weight}
    traffic |= _rollback_target(release, exclude={stable, version})
    new = _with(
        release,
        traffic=_ordered(release, traffic),
        shadow=_unless_shadowing(release, version),
        rollback_to=stable,
    )
    summary = (
        f"{target.model.name} {version} at {new_weight}% on {target.stack} ({stable} {100 - new_weight}%)"
    )
    return Proposal("canary", new, summary)


def _canary_stable(target: Target, release: Release, version: str) -> str:
    others = [v for v in release.serving() if v != version]
    if len(others) != 1:
        if not others:
            raise target.refuse(
                f"{version} already takes all traffic of {target.model.name} on {target.stack}",
                "canary a different version",
            )
        raise target.refuse(
            f"{', '.join(others)} of {target.model.name} all serve on {target.stack}, but a canary needs one stable version",
            "finish the canary or experiment first with 'modelctl promote' or 'modelctl rollback'",
        )
    stable = others[0]
    if release.traffic.get(version, 0) > release.traffic[stable]:
        raise target.refuse(
            f"{version} already takes more traffic than {stable} on {target.stack}",
            "promote it with 'modelctl promote' or roll back with 'modelctl rollback'",
        )
    return stable


def _next_step(target: Target, release: Release, current: int) -> int:
    steps = release.analysis.steps
    for step in steps:
        if step > current:
            return step
    raise target.refuse(
        f"the canary is at {current}%, the last analysis step ({steps[-1]}%)",
        f"promote it with 'modelctl promote {target.model.name} --stack {target.stack}'",
    )


def promote(target: Target, release: Release) -> Proposal:
    """The canary takes all traffic; the old stable stays deployed at weight 0 for a fast rollback."""
    serving = release.serving()
    if len(serving) != 2:
        raise target.refuse(
            f"{target.model.name} has {len(serving)} serving version(s) on {target.stack}, but promote needs a canary next to the stable version",
            f"start one with 'modelctl canary {target.model.name} VERSION --stack {target.stack}'",
        )
    stable, new_stable = split_roles(release) or (serving[0], serving[1])
    require_registered(target, new_stable)
    traffic = _ordered(release, {new_stable: 100, stable: 0})
    # No sticky cookie: it would keep pinned users on the old version at weight 0.
    new = _with(
        release,
        traffic=traffic,
        shadow=_unless_shadowing(release, new_stable),
        sticky=None,
        experiment=None,
        rollback_to=stable,
    )
    summary = f"{target.model.name} {new_stable} to 100% on {target.stack} ({stable} kept at 0% for rollback)"
    return Proposal("promote", new, summary)


def parse_split(text: str) -> dict[str, int]:
    """`v1.0.0=50,v1.1.0=50` as a mapping; a malformed entry is a UserError."""
    split: dict[str, int] = {}
    for part in text.split(","):
        version, sep, weight = part.strip().partition("=")
        if not sep or not weight.strip().isdigit() or version.strip() in split:
            raise UserError(
                "--split",
                f"{part.strip()!r} is not a distinct VERSION=WEIGHT entry",
                "write it like v1.0.0=50,v1.1.0=50",
            )
        split[version.strip()] = int(weight)
    return split


# What `modelctl ab` writes for the settings it is not given (the README's example experiment);
# the metric and the effect worth detecting have no default: they are the experiment's question.
EXPERIMENT_DEFAULTS: dict[str, Any] = {"min_duration": "7d", "max_duration": "28d"}
EXPERIMENT_REQUIRED = ("metric", "effect")


def ab(
    target: Target,
    release: Release,
    split: Mapping[str, int],
    sticky: bool,
    experiment: Mapping[str, Any] | None = None,
) -> Proposal:
    """An A/B experiment between two versions, optionally sticky per user by cookie, with its
    settings: `experiment` (keys of `schema.Experiment`) over those already beside the release
    (hand-written), over `EXPERIMENT_DEFAULTS`; `metric` and `effect` must be given one way.

    Raises
    ------
    UserError
        A version is unknown, revoked or held; the split is not two versions summing to 100; or
        the settings are missing or invalid (one line naming the setting).
    """
    if len(split) != 2 or any(not 1 <= w <= 99 for w in split.values()) or sum(split.values()) != 100:
        raise target.refuse(
            f"split {describe_traffic(split)} is not an A/B split",
            "give two versions, each 1-99, summing to 100 (an experiment compares two)",
        )
    for version in split:
        require_releasable(target, release, version)
    settings = _experiment_settings(target, release, experiment or {})
    stable = _starting_point(release)
    traffic = dict(split)
    if stable not in traffic:
        traffic[stable] = 0
    else:
        traffic |= _rollback_target(release, exclude=set(traffic))
    new = _with(
        release,
        traffic=_ordered(release, traffic),
        sticky=(release.sticky or Sticky()) if sticky else None,
        shadow=None if release.shadow and release.shadow.version in split else release.shadow,
        experiment=settings,
        rollback_to=stable,
    )
    cookie = f", sticky by cookie {new.sticky.cookie}" if new.sticky else ""
    summary = (
        f"{target.model.name} {describe_traffic(split)} on {target.stack}{cookie}; "
        f"experiment on {settings.metric}, effect {settings.effect:g}, at least {settings.min_duration}"
    )
    return Proposal("ab", new, summary)


def _experiment_settings(target: Target, release: Release, given: Mapping[str, Any]) -> Experiment:
    existing = release.experiment.model_dump(exclude_unset=True) if release.experiment else {}
    merged = {**EXPERIMENT_DEFAULTS, **existing, **{k: v for k, v in given.items() if v is not None}}
    missing = [key for key in EXPERIMENT_REQUIRED if key not in merged]
    if missing:
        flags = " and ".join(f"--{key.replace('_', '-')}" for key in missing)
        raise target.refuse(
            f"an A/B experiment needs its {' and its '.join(missing)} (else 'canary analyze' would judge "
            "the split as a canary, and 'ab analyze' could not decide it)",
            f"pass {flags}, e.g. --metric accuracy --effect 0.02 ('modelctl ab plan' sizes the effect)",
            key="experiment",
        )
    try:
        return Experiment.model_validate(merged)
    except ValidationError as exc:
        prefix = ("config", f"{CONFIG_NAMESPACE}:releases", target.model.name, "experiment")
        collect(pydantic_errors(exc, target.file, {}, prefix, Experiment))
        raise  # unreachable: collect raises for a non-empty list


def conclude(target: Target, release: Release, keep: str) -> Proposal:
    """An A/B experiment's end: `keep` takes all traffic, the other arm stays at 0% for a rollback."""
    (other,) = (v for v in release.serving() if v != keep)
    require_registered(target, keep)
    new = _with(
        release,
        traffic=_ordered(release, {**dict.fromkeys(release.traffic, 0), keep: 100}),
        shadow=_unless_shadowing(release, keep),
        sticky=None,
        experiment=None,  # kept in the concluding snapshot; left here, the next canary would be an experiment
        rollback_to=other,
    )
    summary = f"{target.model.name} {keep} to 100% on {target.stack} ({other} kept at 0% for rollback)"
    return Proposal("ab conclude", new, summary)


def shadow(target: Target, release: Release, version: str, percent: float) -> Proposal:
    """Mirror `percent` of the live requests to `version`; its responses are discarded."""
    require_releasable(target, release, version)
    if not 0 < percent <= 100:
        raise target.refuse(
            f"shadow percent {percent:g} is outside (0, 100]", "give a percent above 0, at most 100"
        )
    if release.traffic.get(version, 0) > 0:
        raise target.refuse(
            f"{version} already serves live traffic on {target.stack}",
            "mirror a version that does not serve yet",
        )
    new = _with(
        release, shadow=Shadow(version=version, percent=percent), rollback_to=_starting_point(release)
    )
    summary = f"{target.model.name} {version} mirrors {percent:g}% of traffic on {target.stack}"
    return Proposal("shadow", new, summary)


def shadow_off(target: Target, release: Release) -> Proposal:
    if release.shadow is None:
        raise target.refuse(f"{target.model.name} has no shadow on {target.stack}", "nothing to turn off")
    summary = f"{target.model.name} stops mirroring to {release.shadow.version} on {target.stack}"
    return Proposal("shadow", _with(release, shadow=None), summary)


def bluegreen(target: Target, release: Release, version: str, mirror: float | None = None) -> Proposal:
    """Deploy `version` (green) at weight 0 next to the stable version (blue), optionally mirrored."""
    require_releasable(target, release, version)
    blue = _single_stable(target, release, "blue-green")
    if version in release.traffic:
        raise target.refuse(
            f"{version} is already deployed on {target.stack}",
            f"switch to it with 'modelctl bluegreen {target.model.name} {version} --stack {target.stack} --switch'",
        )
    traffic = {**release.traffic, version: 0}
    new_shadow = Shadow(version=version, percent=mirror) if mirror is not None else release.shadow
    new = _with(release, traffic=traffic, shadow=new_shadow, rollback_to=blue)
    mirrored = f", mirroring {mirror:g}%" if mirror is not None else ""
    summary = f"{target.model.name} {version} deployed at 0% on {target.stack} ({blue} 100%{mirrored})"
    return Proposal("bluegreen", new, summary)


def bluegreen_switch(target: Target, release: Release, version: str | None = None) -> Proposal:
    """All traffic moves to green in one step; blue stays deployed at weight 0."""
    blue = _single_stable(target, release, "a blue-green switch")
    green = version or _green(target, release, blue)
    require_releasable(target, release, green)
    if release.traffic.get(green) != 0:
        raise target.refuse(
            f"{green} is not deployed at 0% on {target.stack}",
            f"deploy it first with 'modelctl bluegreen {target.model.name} {green} --stack {target.stack}'",
        )
    new = _with(
        release,
        traffic=_ordered(release, {green: 100, blue: 0}),
        shadow=_unless_shadowing(release, green),
        sticky=None,
        experiment=None,
        rollback_to=blue,
    )
    summary = (
        f"{target.model.name} switched to {green} 100% on {target.stack} ({blue} kept at 0% for rollback)"
    )
    return Proposal("bluegreen", new, summary)


def _single_stable(target: Target, release: Release, what: str) -> str:
    serving = release.serving()
    if len(serving) != 1:
        raise target.refuse(
            f"{', '.join(serving)} of {target.model.name} serve on {target.stack}, but {what} needs one stable version",
            "finish the canary or experiment first with 'modelctl promote' or 'modelctl rollback'",
        )
    return serving[0]


def _green(target: Target, release: Release, blue: str) -> str:
    waiting = [v for v, w in release.traffic.items() if w == 0 and Version(v) > Version(blue)]
    if not waiting:
        raise target.refuse(
            f"no version newer than {blue} is deployed at 0% on {target.stack}",
            f"deploy one with 'modelctl bluegreen {target.model.name} VERSION --stack {target.stack}'",
        )
    return max(waiting, key=Version)


def baseline(release: Release) -> str:
    """The stable version the current release started from, where a rollback sends all traffic.

    `rollback_to` where recorded. For a stack file written before it was: the heaviest serving
    version during a split, else the newest older version kept at weight 0 (after a promote),
    else the one version serving.
    """
    if release.rollback_to is not None:
        return release.rollback_to
    serving = release.serving()
    if len(serving) > 1:
        return stable_version(release)
    older = [v for v, w in release.traffic.items() if w == 0 and Version(v) < Version(serving[0])]
    return max(older, key=Version) if older else serving[0]


def rollback(
    target: Target,
    release: Release,
    now: datetime,
    to: str | None = None,
    reason: str | None = None,
) -> Proposal:
    """All traffic back to the release's stable version (or `to`); the versions left are held.

    Parameters
    ----------
    target : Target
        The model and the stack.
    release : Release
        The current release.
    now : datetime
        When the hold starts (UTC).
    to : str, optional
        Roll back to this version instead of `baseline(release)`.
    reason : str, optional
        Why, recorded with each hold (default: "rolled back to <version>").

    Returns
    -------
    Proposal
        `{stable: 100}` without shadow or stickiness, the versions moved away from under `held`
        and header overrides naming them removed. Unchanged (`idempotent`) when the release is
        already fully and only on that version: a second rollback is a no-op, never a re-promotion.

    Raises
    ------
    UserError
        The version is unknown, revoked, or held on this stack.
    """
    stable = to or baseline(release)
    require_registered(target, stable)
    require_not_held(target, release, stable)
    leaving = _moved_from(release, stable)
    hold = Hold(reason=reason or f"rolled back to {stable}", since=now)
    held = {**release.held, **{v: release.held.get(v, hold) for v in leaving}}
    new = _with(
        release,
        traffic={stable: 100},
        shadow=None,
        sticky=None,
        experiment=None if len(release.serving()) > 1 else release.experiment,
        overrides={h: v for h, v in release.overrides.items() if v not in held},
        rollback_to=None,
        held=held,
    )
    if new == release:
        already = f"; {', '.join(sorted(release.held, key=Version))} held" if release.held else ""
        summary = f"{target.model.name} is already fully on {stable} on {target.stack}{already}; nothing to roll back"
        return Proposal("rollback", release, summary, restores=True, idempotent=True)
    holding = f", holding {', '.join(leaving)}" if leaving else ""
    summary = f"{target.model.name} to {stable} 100% on {target.stack}{holding}"
    return Proposal("rollback", new, summary, restores=True)


def _moved_from(release: Release, stable: str) -> list[str]:
    """The versions a rollback to `stable` takes traffic from: those serving or mirrored, and a
    green deployed at weight 0 (newer than `stable`); older versions kept warm are not."""
    mirrored = {release.shadow.version} if release.shadow else set()
    return [
        v
        for v in release.deployed()
        if v != stable and (release.traffic.get(v, 0) > 0 or v in mirrored or Version(v) > Version(stable))
    ]


def clear_hold(target: Target, release: Release, version: str, reason: str) -> Proposal:
    """Lift the hold on `version`, so releases may give it traffic on this stack again.

    Raises
    ------
    UserError
        The reason is empty, or the version is not registered.
    """
    if version not in target.model.versions:
        raise unknown_version(
            target.file, target.model.name, version, target.model.ordered_versions(), target.key
        )
    if not reason.strip():
        raise target.refuse(
            "clearing a hold needs a reason", "say why the version is fit again with --reason"
        )
    if version not in release.held:
        summary = f"{target.model.name} {version} is not held on {target.stack}; nothing to clear"
        return Proposal("release-hold", release, summary, idempotent=True)
    held = {v: h for v, h in release.held.items() if v != version}
    summary = f"{target.model.name} {version} may take traffic on {target.stack} again ({reason.strip()})"
    return Proposal("release-hold", _with(release, held=held), summary)


def _starting_point(release: Release) -> str:
    """The stable version a new canary, A/B split or shadow starts from (and rolls back to)."""
    serving = release.serving()
    return serving[0] if len(serving) == 1 else stable_version(release)


def _rollback_target(release: Release, exclude: set[str]) -> dict[str, int]:
    """Keep at most one weight-0 version, the newest, as the stable's warm predecessor."""
    idle = [v for v, w in release.traffic.items() if w == 0 and v not in exclude]
    return {max(idle, key=Version): 0} if idle else {}


def _unless_shadowing(release: Release, version: str) -> Shadow | None:
    """A mirror of a version that now takes live traffic is dropped."""
    return None if release.shadow and release.shadow.version == version else release.shadow


def _ordered(release: Release, traffic: Mapping[str, int]) -> dict[str, int]:
    """Versions already listed keep their place; new ones follow, so diffs stay small."""
    known = [v for v in release.traffic if v in traffic]
    return {v: traffic[v] for v in known + [v for v in traffic if v not in release.traffic]}


def _with(release: Release, **changes: Any) -> Release:
    # Validate the result: model_copy(update=...) alone would skip the weights-sum check.
    return Release.model_validate({**release.model_dump(by_alias=True), **_dumped(changes)})


def _dumped(changes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _dump(v) for k, v in changes.items()}


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True)
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- soak


def serving_since(past: Sequence[tuple[datetime, Release | None]], version: str) -> datetime | None:
    """When `version` began its current unbroken run of live traffic, or None if it does not serve.

    `past` is (commit time, release) newest first; a release of None means not deployed.
    """
    since: datetime | None = None
    for when, release in past:
        if release is None or release.traffic.get(version, 0) == 0:
            break
        since = when
    return since


def require_soaked(
    target: Target,
    versions: Sequence[str],
    requires: Requires,
    past: Sequence[tuple[datetime, Release | None]],
    now: datetime,
) -> None:
    """Refuse a version that has not served on the required stack for the whole soak time.

    `past` is the required stack's history of this model's release, newest first.
    """
    for version in versions:
        since = serving_since(past, version)
        served = (now - since).total_seconds() if since else 0.0
        if since and served >= duration_seconds(requires.soak):
            continue
        problem = (
            f"{version} of {target.model.name} has served on {requires.stack} for only {format_duration(served)}"
            if since
            else f"{version} of {target.model.name} does not serve on {requires.stack}"
        )
        raise target.refuse(
            f"{problem}, and {target.stack} requires {requires.soak} there first",
            f"release it on {requires.stack} and wait until it has served there for {requires.soak}",
            key=f"traffic.{version}",
        )


def format_duration(seconds: float) -> str:
    """Whole minutes, shortened to the two largest units: '1d 2h', '3h 5m', '0m'."""
    days, rest = divmod(max(int(seconds // 60), 0), 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts[:2]) or "0m"


# ---------------------------------------------------------------- the stack file edit


def edit_stack_text(text: str, stack: str, model: str, before: Release, after: Release) -> str:
    """The stack file with only `modelctl:releases.<model>` changed, comments and order kept.

    Returns
    -------
    str
        The stack file's new text: only the release's traffic fields changed, comments and
        ordering of everything else kept (ruamel round trip of the release's lines,
        `yamlio.edit_block`).
    """
    dumped = after.model_dump(mode="json", by_alias=True, include=set(RELEASE_FIELDS))
    if dumped["experiment"]:  # settings left unset are not written as empty keys
        dumped["experiment"] = {k: v for k, v in dumped["experiment"].items() if v is not None}

    def edit(node: Any) -> None:
        for field in RELEASE_FIELDS:
            if getattr(before, field) == getattr(after, field):
                continue
            if dumped[field] in (None, {}):
                yamlio.remove_key(node, field)
            elif field in node:
                node[field] = _merge(node[field], _plain(dumped[field]))
            else:
                # A new field goes after the release fields before it, so it reads next to traffic.
                earlier = [f for f in RELEASE_FIELDS[: RELEASE_FIELDS.index(field)] if f in node]
                yamlio.insert_key(node, earlier[-1] if earlier else None, field, _plain(dumped[field]))

    path = ("config", f"{CONFIG_NAMESPACE}:releases", model)
    return yamlio.edit_block(text, stack_file(stack), path, edit)


def _merge(existing: Any, wanted: Any) -> Any:
    """`wanted`, reusing the existing mapping (and its comments) where there is one."""
    from ruamel.yaml.comments import CommentedMap

    if not (isinstance(existing, CommentedMap) and isinstance(wanted, dict)):
        return wanted
    for key in [k for k in existing if k not in wanted]:
        yamlio.remove_key(existing, key)
    for key, value in wanted.items():
        if key in existing:
            existing[key] = _merge(existing[key], value)
        else:
            yamlio.insert_key(existing, list(existing)[-1] if existing else None, key, value)
    if list(existing) != list(wanted):
        for key in wanted:
            existing.move_to_end(key)
    return existing


def _plain(value: Any) -> Any:
    """Whole floats as ints, so a percent of 10 is written `10`, not `10.0`."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
