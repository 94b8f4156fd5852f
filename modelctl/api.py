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

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict, Unpack

import orjson

from modelctl.core import releases
from modelctl.core.errors import UserError, collect
from modelctl.core.releases import Proposal, Target
from modelctl.core.schema import Release, Status
from modelctl.core.state import State, stack_file
from modelctl.repo import dvcstore, gitutil, registry
from modelctl.repo.history import StackChange, release_changes, stack_history
from modelctl.repo.registry import Bump, Registered, Say
from modelctl.repo.state import read_state
from modelctl.repo.transaction import (
    Build,
    PolicyCheck,
    ReleaseChange,
    apply_release,
    commit_files,
    require_git_ready,
)

if TYPE_CHECKING:
    from modelctl.core.analysis.experiment import ExperimentDecision, ExperimentSnapshot
    from modelctl.core.analysis.judge import Decision
    from modelctl.core.analysis.shadow import Logged, ShadowReport
    from modelctl.core.analysis.snapshot import Snapshot

__all__ = [
    "Analysis",
    "Experiment",
    "ReleaseChange",
    "Replay",
    "StatusChange",
    "TransactionOptions",
    "ab",
    "ab_analyze",
    "ab_traffic",
    "bluegreen",
    "bluegreen_switch",
    "canary",
    "canary_analyze",
    "check_policies",
    "clear_hold",
    "deprecate",
    "promote",
    "register",
    "replay",
    "revoke",
    "rollback",
    "shadow",
    "shadow_off",
    "shadow_report",
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
# Every one takes root (the repository), stack (the stack file to change) and the
# TransactionOptions below, and returns a ReleaseChange.


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


def _apply(
    root: Path,
    model: str,
    stack: str,
    build: Build,
    options: TransactionOptions,
    *,
    evidence: Mapping[str, str] | None = None,
    message: Callable[[Proposal], str] | None = None,
) -> ReleaseChange:
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
    return _apply(
        root,
        model,
        stack,
        lambda t, r, _: releases.canary(t, r, version, weight),
        options,
        evidence=files,
        message=message,
    )


def promote(
    root: Path,
    model: str,
    *,
    stack: str,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """The canary takes 100% of traffic; the old stable version stays deployed at 0%."""
    return _apply(root, model, stack, lambda t, r, _: releases.promote(t, r), options)


def ab(
    root: Path,
    model: str,
    *,
    stack: str,
    split: Mapping[str, int],
    sticky: bool = False,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Split traffic between versions for an A/B experiment.

    Parameters
    ----------
    split
        Version -> percent of traffic, summing to 100.
    sticky
        Keep each user on one version by cookie.
    """
    return _apply(root, model, stack, lambda t, r, _: releases.ab(t, r, split, sticky), options)


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
    return _apply(root, model, stack, lambda t, r, _: releases.shadow(t, r, version, percent), options)


def shadow_off(
    root: Path,
    model: str,
    *,
    stack: str,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Stop mirroring."""
    return _apply(root, model, stack, lambda t, r, _: releases.shadow_off(t, r), options)


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
    return _apply(root, model, stack, lambda t, r, _: releases.bluegreen(t, r, version, mirror), options)


def bluegreen_switch(
    root: Path,
    model: str,
    *,
    stack: str,
    version: str | None = None,
    **options: Unpack[TransactionOptions],
) -> ReleaseChange:
    """Move all traffic to the green version (default: the newest deployed at 0%)."""
    return _apply(root, model, stack, lambda t, r, _: releases.bluegreen_switch(t, r, version), options)


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
    return _apply(root, model, stack, lambda t, r, _: releases.rollback(t, r, now, to, reason), options)


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
    return _apply(root, model, stack, lambda t, r, _: releases.clear_hold(t, r, version, reason), options)


# ---------------------------------------------------------------- canary analysis

# Trailers of an analysis commit: what was done, the snapshot, and the judge's own answer.
DECISION_TRAILER = "Analysis-Decision"
SNAPSHOT_TRAILER = "Analysis-Snapshot"
ACTION_TRAILER = "Judge-Action"
DIGEST_TRAILER = "Snapshot-Sha256"
Outcome = Literal["step", "promote", "rollback", "hold"]


@dataclass(frozen=True)
class Analysis:
    """One canary's analysis: the judge's decision and what was done with it.

    `outcome` is "step" (to the next weight of analysis.steps), "promote" (after the last
    step), "rollback" or "hold"; `commit` the commit made (None on a dry run, or on a hold
    without `record`); `snapshot_path` where the snapshot is (or would be) committed.
    """

    model: str
    stack: str
    outcome: Outcome
    decision: Decision
    snapshot: Snapshot
    snapshot_path: str
    commit: str | None
    change: ReleaseChange | None
    message: str


@dataclass(frozen=True)
class Replay:
    """A committed decision recomputed from the snapshot it stored."""

    commit: str
    snapshot_path: str
    recorded_action: str
    recorded_digest: str
    decision: Decision

    @property
    def matches(self) -> bool:
        return (
            self.decision.action == self.recorded_action
            and self.decision.snapshot_sha256 == self.recorded_digest
        )


def canary_analyze(
    root: Path,
    *,
    stack: str,
    model: str | None = None,
    prometheus: str | None = None,
    dry_run: bool = False,
    record: bool = False,
    now: datetime | None = None,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> list[Analysis]:
    """Judge every canary on `stack` (or only `model`'s) from Prometheus, and apply each decision.

    For each release in a canary state (two versions serving, the canary at most half): query
    Prometheus with the contract's window queries since the current step's commit, build the
    snapshot, run the judge and commit, as one commit, the snapshot at
    `analysis/<stack>/<model>/<UTC time>.json` with the stack file's next state: the next
    weight of analysis.steps, promotion after the last, rollback on harm. A hold commits
    nothing unless `record` (then the snapshot alone). A stack with no canary (and no `model`)
    gives an empty list without querying anything.

    Parameters
    ----------
    prometheus
        Prometheus' URL; default the stack's `monitoring.prometheus_url`, then the local
        stack's (`modelctl up`).
    now
        The instant the queries are evaluated at (default: the current time).
    lock_timeout
        Seconds to wait for another writer before each commit (see `repository_lock`).

    Raises
    ------
    UserError, UserErrors
        No Prometheus URL, Prometheus failing, `model` with no canary, or the change refused.
    """
    from modelctl.core.analysis.snapshot import canary_arms

    chosen = _analyzed(
        root,
        stack,
        model,
        canary_arms,
        problem=f"has no canary on {stack}",
        fix=f"start one with 'modelctl canary {model} VERSION --stack {stack}'",
        prometheus=prometheus,
        now=now,
    )
    return [
        _analyze(
            root,
            stack,
            name,
            url=chosen.url,
            taken_at=chosen.taken_at,
            history=chosen.history,
            dry_run=dry_run,
            record=record,
            policies=policies,
            lock_timeout=lock_timeout,
        )
        for name in chosen.names
    ]


def _analyze(
    root: Path,
    stack: str,
    model: str,
    *,
    url: str,
    taken_at: datetime,
    history: list[StackChange],
    dry_run: bool,
    record: bool,
    policies: PolicyCheck,
    lock_timeout: float | None,
) -> Analysis:
    from modelctl.core.analysis import snapshot as snapshots
    from modelctl.core.analysis import window
    from modelctl.core.analysis.judge import judge

    release = read_state(root).stack(stack).config.releases[model]
    arms = snapshots.canary_arms(release)
    assert arms is not None  # canary_analyze chose only canaries
    changes = release_changes(history, model)
    window_start = changes[0].date if changes else taken_at
    started = [c.date for c in itertools.takewhile(lambda c: _serves(c.release(model), arms.canary), changes)]
    seconds = (taken_at - window_start).total_seconds()
    queries = window.queries(model, seconds)
    snapshot = snapshots.build_snapshot(
        model=model,
        stack=stack,
        arms=arms,
        analysis=release.analysis,
        taken_at=taken_at,
        window_start=window_start,
        canary_started=started[-1] if started else window_start,
        answers=_window_counts(url, queries, taken_at, seconds),
        source={"prometheus": url, "queries": queries},
    )
    decision = judge(snapshot)
    path = f"analysis/{stack}/{model}/{taken_at.astimezone(UTC):%Y%m%dT%H%M%SZ}.json"
    files = {path: orjson.dumps(snapshot.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n"}
    outcome = _outcome(decision.action, release, arms.canary_weight)

    def message(proposal: Proposal | None, committed: bool = True) -> str:
        subject = proposal.message.partition(": ")[2] if proposal else f"{model} {arms.canary} on {stack}"
        head = f"canary analyze {outcome}: {subject}\n\n{'; '.join(decision.reasons)}\n"
        if not committed:
            return head
        return (
            f"{head}\n{DECISION_TRAILER}: {outcome}\n{SNAPSHOT_TRAILER}: {path}\n"
            f"{ACTION_TRAILER}: {decision.action}\n{DIGEST_TRAILER}: {decision.snapshot_sha256}\n"
        )

    if outcome == "hold":
        made = None
        if record and not dry_run:
            require_git_ready(root, [path])
            made = commit_files(root, files, message(None), lock_timeout=lock_timeout)
        # Unrecorded, the hold's message names no snapshot: none is committed.
        return Analysis(
            model, stack, outcome, decision, snapshot, path, made, None, message(None, made is not None)
        )

    def next_release(target: Target, current: Release, _: Path) -> Proposal:
        if outcome == "rollback":
            return releases.rollback(target, current, taken_at, reason=f"canary analyze {path}")
        # A rollback may have held the canary since the snapshot was read: never give it traffic.
        releases.require_not_held(target, current, arms.canary)
        if outcome == "step":
            return releases.canary(target, current, arms.canary)
        return releases.promote(target, current)

    change = apply_release(
        root,
        model,
        stack,
        next_release,
        policies=policies,
        dry_run=dry_run,
        evidence=files,
        message=message,
        lock_timeout=lock_timeout,
    )
    return Analysis(model, stack, outcome, decision, snapshot, path, change.commit, change, change.message)


def _outcome(action: str, release: Release, canary_weight: int) -> Outcome:
    if action == "promote":
        return "step" if canary_weight < release.analysis.steps[-1] else "promote"
    return "rollback" if action == "rollback" else "hold"


def _serves(release: Release | None, version: str) -> bool:
    return release is not None and release.traffic.get(version, 0) > 0


@dataclass(frozen=True)
class _Chosen:
    """The releases an analysis looks at, and what every look shares: where and when to query
    Prometheus, and the stack's history (the windows' starts)."""

    names: list[str]
    state: State
    url: str = ""
    taken_at: datetime = datetime.min
    history: list[StackChange] = dataclasses.field(default_factory=list)


def _analyzed(
    root: Path,
    stack: str,
    model: str | None,
    arms: Callable[[Release], object],
    *,
    problem: str,
    fix: str,
    prometheus: str | None,
    now: datetime | None,
    history: bool = True,
) -> _Chosen:
    """The models on `stack` (only `model`, when given) whose release has `arms` (not None), with
    Prometheus' URL (see `_prometheus_url`), the instant `now` (default: the current time) and,
    when `history`, the stack's history. With no release chosen nothing else is read: a stack
    without one needs no Prometheus (prod may have none).

    Raises
    ------
    UserError
        `model` is given and is not registered, or its release has none: "<model> <problem>; <fix>";
        the stack file has uncommitted changes; or no Prometheus URL.
    """
    state = read_state(root)
    config = state.stack(stack).config
    if model is not None:
        state.model(model)
    names = [
        name
        for name, release in config.releases.items()
        if (model is None or name == model) and arms(release) is not None
    ]
    if model is not None and not names:
        raise UserError(stack_file(stack), f"{model} {problem}", fix)
    if not names:
        return _Chosen(names, state)
    if gitutil.dirty_paths(root, stack_file(stack)):
        # The release is read from the file, but its window from the commits that changed it.
        raise UserError(
            stack_file(stack),
            "has uncommitted changes, and an analysis window starts at the commit that changed the release",
            "commit the change first (release commands commit unless --no-commit), or discard it",
        )
    return _Chosen(
        names,
        state,
        _prometheus_url(root, stack, prometheus),
        now or datetime.now(UTC),
        stack_history(root, stack) if history else [],
    )


def _window_counts(
    url: str, queries: dict[str, str], at: datetime, seconds: float
) -> dict[str, list[tuple[Mapping[str, str], float]]]:
    """The window counts of `queries` (from `window.queries`) over the `seconds` before `at`,
    exact: the samples of each series reset within the window are read too."""
    from modelctl.core.analysis import window
    from modelctl.repo.prometheus import query_all, query_samples

    answers = query_all(url, queries, at)
    reset = {key: window.sample_query(*key, seconds) for key in window.resets(answers)}
    return window.window_counts(answers, query_samples(url, reset, at) if reset else None)


def _prometheus_url(root: Path, stack: str, given: str | None) -> str:
    """`given`, else the stack's monitoring.prometheus_url, else the local stack's.

    Raises
    ------
    UserError
        None of them.
    """
    configured = read_state(root).stack(stack).config.environment.monitoring.prometheus_url
    url = given or configured or _local_prometheus(root, stack)
    if url is None:
        raise UserError(
            stack_file(stack),
            "no Prometheus to query",
            "pass --prometheus URL, set modelctl:environment.monitoring.prometheus_url, or run 'modelctl up'",
        )
    return url


def _local_prometheus(root: Path, stack: str) -> str | None:
    """The Prometheus of the stack running on this machine (`modelctl up`), None when it is not up."""
    from onebox.stack import status

    try:
        return str(status(root, stack)["prometheus"])
    except UserError:
        return None


def replay(root: Path, rev: str) -> Replay:
    """Recompute the decision of an analysis commit from the snapshot it committed.

    Raises
    ------
    UserError
        `rev` is not a commit, not an analysis commit (no snapshot trailer), or an A/B
        experiment's commit.
    """
    from modelctl.core.analysis.judge import judge

    commit = gitutil.resolve(root, rev)
    trailers = _trailers(gitutil.git(root, "show", "-s", "--format=%B", commit))
    path = trailers.get(SNAPSHOT_TRAILER)
    text = gitutil.show(root, commit, path) if path else None
    if path is None or text is None:
        raise UserError(
            rev,
            "is not an analysis commit (no Analysis-Snapshot trailer naming a committed file)",
            "pass a commit made by 'modelctl canary analyze'",
        )
    snapshot = orjson.loads(text)
    if isinstance(snapshot, dict) and snapshot.get("kind") == "ab":
        raise UserError(
            rev,
            f"is an A/B experiment's commit ({path}); replay recomputes canary decisions only",
            f"read the experiment's decision and snapshot with 'git show {commit[:12]}'",
        )
    decision = judge(snapshot, source=f"{commit[:12]}:{path}")
    return Replay(commit, path, trailers.get(ACTION_TRAILER, ""), trailers.get(DIGEST_TRAILER, ""), decision)


def _trailers(message: str) -> dict[str, str]:
    pairs = (line.split(": ", 1) for line in message.splitlines() if ": " in line)
    return {key: value.strip() for key, value in pairs if key.replace("-", "").isalnum()}


# ---------------------------------------------------------------- A/B experiments

# Instants at which an experiment's counts are read, evenly from its start (the report's plots).
EXPERIMENT_LOOKS = 12
ExperimentOutcome = Literal["winner", "equivalent", "continue"]


@dataclass(frozen=True)
class Experiment:
    """One A/B experiment's analysis and what was done with it.

    `outcome` is "winner", "equivalent" (both conclude the experiment: the winner, or on no
    meaningful difference the control, takes 100% by one commit) or "continue" (nothing
    committed); `commit` is None on a dry run or a continue.
    """

    model: str
    stack: str
    outcome: ExperimentOutcome
    decision: ExperimentDecision
    snapshot: ExperimentSnapshot
    snapshot_path: str
    commit: str | None
    change: ReleaseChange | None
    message: str


def ab_analyze(
    root: Path,
    *,
    stack: str,
    model: str | None = None,
    prometheus: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    policies: PolicyCheck = check_policies,
    lock_timeout: float | None = None,
) -> list[Experiment]:
    """Analyze every A/B experiment on `stack` (or only `model`'s) from Prometheus; conclude by commit.

    An experiment: a release with `experiment` settings and two versions taking traffic. Its
    counts (feedback confusion, value, requests; errors and latency for the guardrails) are
    read with the contract's window queries since the split began, at `EXPERIMENT_LOOKS`
    instants; `modelctl.core.analysis.experiment.analyze` decides. A winner (or, on no meaningful
    difference, the control) takes 100% and the other arm stays at 0% for rollback, in one
    commit with the snapshot at `analysis/<stack>/<model>/<UTC time>.json`; a continue commits
    nothing.

    Parameters
    ----------
    prometheus
        Prometheus' URL; default the stack's `monitoring.prometheus_url`, then the local stack's.
    now
        The instant the queries are evaluated at (default: the current time).

    Raises
    ------
    UserError, UserErrors
        No Prometheus URL, Prometheus failing, `model` with no experiment, or the change refused.
    """
    from modelctl.core.analysis.experiment import ab_arms

    chosen = _analyzed(
        root,
        stack,
        model,
        ab_arms,
        problem=f"has no A/B experiment on {stack} (two versions with traffic and experiment settings)",
        fix=f"split it with 'modelctl ab {model} --split V1=50,V2=50 --stack {stack}' and add "
        f"modelctl:releases.{model}.experiment",
        prometheus=prometheus,
        now=now,
    )
    return [
        _experiment(
            root,
            stack,
            name,
            url=chosen.url,
            taken_at=chosen.taken_at,
            history=chosen.history,
            options={"dry_run": dry_run, "policies": policies, "lock_timeout": lock_timeout},
        )
        for name in chosen.names
    ]


def _experiment(
    root: Path,
    stack: str,
    model: str,
    *,
    url: str,
    taken_at: datetime,
    history: list[StackChange],
    options: TransactionOptions,
) -> Experiment:
    from modelctl.core.analysis import experiment

    snapshot = _experiment_snapshot(root, stack, model, url=url, taken_at=taken_at, history=history)
    decision = experiment.analyze(snapshot)
    path = f"analysis/{stack}/{model}/{taken_at.astimezone(UTC):%Y%m%dT%H%M%SZ}.json"
    if decision.outcome == "continue":
        text = f"ab analyze continue: {model} on {stack}\n\n{'; '.join(decision.reasons)}"
        return Experiment(model, stack, "continue", decision, snapshot, path, None, None, text)
    keep = decision.winner or snapshot.control
    files = {path: orjson.dumps(snapshot.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n"}

    def message(proposal: Proposal) -> str:
        return (
            f"ab analyze {decision.outcome}: {proposal.summary}\n\n{'; '.join(decision.reasons)}\n\n"
            f"{DECISION_TRAILER}: {decision.outcome}\n{SNAPSHOT_TRAILER}: {path}\n"
            f"{DIGEST_TRAILER}: {decision.snapshot_sha256}\n"
        )

    change = apply_release(
        root,
        model,
        stack,
        lambda t, r, _: releases.conclude(t, r, keep),
        policies=options.get("policies", check_policies),
        dry_run=options.get("dry_run", False),
        evidence=files,
        message=message,
        lock_timeout=options.get("lock_timeout"),
    )
    return Experiment(
        model, stack, decision.outcome, decision, snapshot, path, change.commit, change, change.message
    )


def _experiment_snapshot(
    root: Path, stack: str, model: str, *, url: str, taken_at: datetime, history: list[StackChange]
) -> ExperimentSnapshot:
    """The experiment's counts since its split began, read at `EXPERIMENT_LOOKS` instants."""
    from modelctl.core.analysis import experiment, window
    from modelctl.core.analysis.snapshot import Arms, Source, build_snapshot

    state = read_state(root)
    release = state.stack(stack).config.releases[model]
    settings = release.experiment
    arms = experiment.ab_arms(release)
    assert arms is not None
    assert settings is not None
    control, treatment = arms
    both = itertools.takewhile(
        lambda c: _serves(c.release(model), control) and _serves(c.release(model), treatment),
        release_changes(history, model),
    )
    started = ([c.date for c in both] or [taken_at])[-1]
    weights = Arms(control, treatment, release.traffic[control], release.traffic[treatment])
    looks, counts, source = [], None, {}
    for at in experiment.looks_at([started, taken_at], EXPERIMENT_LOOKS + 1)[-EXPERIMENT_LOOKS:]:
        seconds = (at - started).total_seconds()
        queries = window.queries(model, seconds, (*window.WINDOW_QUERIES, *experiment.VALUE_QUERIES))
        answers = _window_counts(url, queries, at, seconds)
        counts = build_snapshot(
            model=model,
            stack=stack,
            arms=weights,
            analysis=release.analysis,
            taken_at=at,
            window_start=started,
            canary_started=started,
            answers=answers,
            source={"prometheus": url, "queries": queries},
        )
        looks.append(experiment.look(at, counts, answers))
        source = {"prometheus": url, "queries": queries}
    assert counts is not None
    return experiment.ExperimentSnapshot(
        model=model,
        stack=stack,
        taken_at=taken_at,
        started=started,
        control=control,
        treatment=treatment,
        positive_class=state.model(model).output.positive_class,
        experiment=settings,
        looks=looks,
        counts=counts,
        source=Source.model_validate(source),
    )


def ab_traffic(root: Path, stack: str, model: str, prometheus: str | None = None) -> dict[str, float]:
    """The model's current rates on `stack` over the last hour: requests and labels per second.

    Raises
    ------
    UserError
        No Prometheus to query, or Prometheus failing.
    """
    from modelctl.core import contract
    from modelctl.repo.prometheus import query_all

    url = _prometheus_url(root, stack, prometheus)
    matchers = {"model": model}
    queries = {
        "requests": contract.query("request_rate", matchers, "model", "1h"),
        "labels": contract.query("feedback_rate", matchers, window="1h"),
    }
    answers = query_all(url, queries, datetime.now(UTC))
    return {name: sum(value for _, value in samples) for name, samples in answers.items()}


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


# ---------------------------------------------------------------- shadow report

SHADOW_REPORT_TRAILER = "Shadow-Report"


@dataclass(frozen=True)
class ShadowResult:
    """One shadow report with where it came from: the window, Prometheus and its queries, the logs."""

    stack: str
    window_start: datetime
    taken_at: datetime
    report: ShadowReport
    source: dict[str, object]

    def to_json(self) -> dict[str, object]:
        return {
            "stack": self.stack,
            "window_start": self.window_start.isoformat(),
            "taken_at": self.taken_at.isoformat(),
            **self.report.to_json(),
            "source": self.source,
        }


def shadow_report(
    root: Path,
    *,
    stack: str,
    model: str | None = None,
    prometheus: str | None = None,
    prediction_logs: list[Path] | None = None,
    window: float | None = None,
    now: datetime | None = None,
) -> list[ShadowResult]:
    """How each shadow on `stack` (or only `model`'s) predicts compared with the versions it mirrors.

    The window starts when the release began mirroring its current shadow version (from git),
    or `window` seconds before `now`. Counters come from Prometheus (see `canary_analyze` for
    the default URL); the prediction log from `prediction_logs` (JSON-lines files such as
    `kubectl logs` of the model's pods), else, for a stack running on this machine, the
    servers' own logs.

    Raises
    ------
    UserError
        No Prometheus URL, Prometheus failing, an unreadable log, or `model` has no shadow.
    """
    chosen = _analyzed(
        root,
        stack,
        model,
        lambda release: release.shadow,
        problem=f"mirrors no version on {stack}",
        fix=f"start one with 'modelctl shadow {model} VERSION --percent 100 --stack {stack}'",
        prometheus=prometheus,
        now=now,
        history=window is None,
    )
    return [
        _shadow_report(
            root,
            chosen.state,
            stack,
            name,
            url=chosen.url,
            taken_at=chosen.taken_at,
            history=chosen.history,
            window=window,
            prediction_logs=prediction_logs,
        )
        for name in chosen.names
    ]


def _shadow_report(
    root: Path,
    state: State,
    stack: str,
    model: str,
    *,
    url: str,
    taken_at: datetime,
    history: list[StackChange],
    window: float | None,
    prediction_logs: list[Path] | None,
) -> ShadowResult:
    from datetime import timedelta

    from modelctl.core.analysis import shadow

    release = state.stack(stack).config.releases[model]
    assert release.shadow is not None  # shadow_report chose only shadowed releases
    mirrored = release.shadow.version
    if window is None:
        same = itertools.takewhile(
            lambda c: (
                (r := c.release(model)) is not None and r.shadow is not None and r.shadow.version == mirrored
            ),
            release_changes(history, model),
        )
        starts = [c.date for c in same]
        window_start = starts[-1] if starts else taken_at - timedelta(hours=1)
    else:
        window_start = taken_at - timedelta(seconds=window)
    seconds = (taken_at - window_start).total_seconds()
    queries = shadow.queries(model, seconds)
    answers = _window_counts(url, queries, taken_at, seconds)
    primary = [v for v in release.serving() if v != mirrored]
    files = prediction_logs if prediction_logs is not None else _local_server_logs(root, stack, model)
    logged = _read_logs(files, model, window_start) if files else None
    output = state.model(model).output
    report = shadow.compare(
        model,
        shadow.side(answers, primary),
        shadow.side(answers, [mirrored]),
        class_names=output.classes,
        positive_class=output.positive_class,
        percent=release.shadow.percent,
        logged=logged,
    )
    source: dict[str, object] = {
        "prometheus": url,
        "queries": queries,
        "prediction_logs": [str(f) for f in files],
    }
    return ShadowResult(stack, window_start, taken_at, report, source)


def _read_logs(files: list[Path], model: str, since: datetime) -> list[Logged]:
    from modelctl.core.analysis.shadow import parse_log

    records: list[Logged] = []
    for path in files:
        try:
            with path.open("rb") as lines:
                records += parse_log(lines, model, since=since)
        except OSError as exc:
            raise UserError(
                str(path), f"cannot read the prediction log ({exc.strerror})", "check the path"
            ) from None
    return records


def _local_server_logs(root: Path, stack: str, model: str) -> list[Path]:
    """The log files of `model`'s servers on a stack running here (`modelctl up`), else none."""
    from onebox.stack import RunState, run_dir

    state = RunState.load(run_dir(root, stack), stack)
    return sorted(
        {Path(p.log) for p in state.procs.values() if p.kind == "server" and p.extra.get("model") == model}
    )


def _shadow_evidence(
    path: Path, model: str, version: str, stack: str
) -> tuple[dict[str, str], Callable[[Proposal], str]]:
    """The shadow report at `path` as a file to commit, and the commit message citing it."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UserError(
            str(path),
            f"cannot read the shadow report ({exc})",
            "pass the file 'modelctl shadow report --json' wrote",
        ) from None
    # The command's output holds one report per shadowed model; a single report is taken as is.
    found = data.get("reports", [data]) if isinstance(data, dict) else []
    report = next((r for r in found if isinstance(r, dict) and r.get("model") == model), None)
    if report is None or report.get("shadow") != version or report.get("stack") != stack:
        raise UserError(
            str(path),
            f"is not a shadow report of {model} {version} on {stack}",
            f"run 'modelctl shadow report --stack {stack} --model {model} --json' while {version} is the shadow",
        )
    taken = datetime.fromisoformat(str(report["taken_at"])).astimezone(UTC)
    stored = f"analysis/{stack}/{model}/shadow-{version}-{taken:%Y%m%dT%H%M%SZ}.json"
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
    return {stored: text}, lambda proposal: f"{proposal.message}\n\n{SHADOW_REPORT_TRAILER}: {stored}\n"
