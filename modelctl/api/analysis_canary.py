"""`canary analyze` and `replay`: Prometheus -> the canary snapshot -> the judge -> one commit.

The decision is `modelctl.core.analysis.judge`'s; this module reads its input and commits its
output: the snapshot with the stack file's next state, and the trailers `replay` reads back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Literal

import orjson

from modelctl.api.analysis import (
    DECISION_TRAILER,
    DIGEST_TRAILER,
    SNAPSHOT_TRAILER,
    Scope,
    choose,
    read_counts,
    snapshot_file,
)
from modelctl.api.releases import TransactionOptions, apply, check_policies
from modelctl.core import contract, releases
from modelctl.core.analysis import window
from modelctl.core.analysis.judge import Decision, judge
from modelctl.core.analysis.snapshot import Mesh, Snapshot, build_snapshot, canary_arms
from modelctl.core.errors import UserError
from modelctl.core.releases import Proposal, Target
from modelctl.core.schema import Release
from modelctl.repo import gitutil
from modelctl.repo.transaction import PolicyCheck, ReleaseChange, commit_files, require_git_ready

# The judge's own answer, beside what was done with it (DECISION_TRAILER).
ACTION_TRAILER = "Judge-Action"
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
    rollbacks_only: bool = False,
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
    rollbacks_only
        Commit rollbacks only; a step or a promotion is judged and returned uncommitted, as a
        dry run returns it (a production step is reviewed in a pull request: the in-cluster
        job of a production stack runs with it).
    now
        The instant the queries are evaluated at (default: the current time).
    lock_timeout
        Seconds to wait for another writer before each commit (see `repository_lock`).

    Raises
    ------
    UserError, UserErrors
        No Prometheus URL, Prometheus failing, `model` with no canary, or the change refused.
    """
    scope = choose(
        root,
        stack,
        model,
        canary_arms,
        _canary_run,
        problem=f"has no canary on {stack}",
        fix=f"start one with 'modelctl canary {model} VERSION --stack {stack}'",
        url=prometheus,
        now=now,
    )
    options: TransactionOptions = {"dry_run": dry_run, "policies": policies, "lock_timeout": lock_timeout}
    return [
        _analyze(scope, name, options, record=record, rollbacks_only=rollbacks_only) for name in scope.names
    ]


def _canary_run(release: Release) -> Callable[[Release | None], bool]:
    """A canary's run: the states in which its canary takes traffic."""
    arms = canary_arms(release)
    assert arms is not None  # canary_analyze follows only canaries
    return partial(releases.serves, version=arms.canary)


def _analyze(
    scope: Scope, model: str, options: TransactionOptions, *, record: bool, rollbacks_only: bool
) -> Analysis:
    release = scope.release(model)
    arms = canary_arms(release)
    assert arms is not None  # canary_analyze chose only canaries
    changes = scope.changes(model)
    taken_at = scope.taken_at
    step_started = changes[0].date if changes else taken_at
    window_start, notes = scope.counted_from(model, step_started)
    seconds = (taken_at - window_start).total_seconds()
    namespace = scope.state.stack(scope.stack).config.environment.namespace
    mesh = Mesh(contract.MESH_SOURCES[scope.mesh], namespace)
    queries = window.queries(
        model, seconds, (*window.WINDOW_QUERIES, *mesh.queries()), bound=scope.bound, namespace=namespace
    )
    counted = read_counts(scope.url, queries, taken_at, seconds)
    snapshot = build_snapshot(
        model=model,
        stack=scope.stack,
        arms=arms,
        analysis=release.analysis,
        taken_at=taken_at,
        window_start=window_start,
        step_started=step_started,
        canary_started=scope.began(model) or window_start,
        answers=counted.counts,
        source={"prometheus": scope.url, "queries": queries},
        notes=[*notes, *counted.notes(scope.bound)],
        mesh=mesh,
    )
    decision = judge(snapshot)
    path = scope.snapshot_path(model)
    files = snapshot_file(path, snapshot)
    outcome = _outcome(decision.action, release, arms.canary_weight)

    def message(proposal: Proposal | None, committed: bool = True) -> str:
        subject = (
            proposal.message.partition(": ")[2] if proposal else f"{model} {arms.canary} on {scope.stack}"
        )
        head = f"canary analyze {outcome}: {subject}\n\n{'; '.join(decision.reasons)}\n"
        if not committed:
            return head
        return (
            f"{head}\n{DECISION_TRAILER}: {outcome}\n{SNAPSHOT_TRAILER}: {path}\n"
            f"{ACTION_TRAILER}: {decision.action}\n{DIGEST_TRAILER}: {decision.snapshot_sha256}\n"
        )

    if outcome == "hold":
        made = None
        if record and not options.get("dry_run"):
            require_git_ready(scope.root, [path])
            made = commit_files(scope.root, files, message(None), lock_timeout=options.get("lock_timeout"))
        # Unrecorded, the hold's message names no snapshot: none is committed.
        return Analysis(
            model, scope.stack, outcome, decision, snapshot, path, made, None, message(None, made is not None)
        )

    def next_release(target: Target, current: Release, _: Path) -> Proposal:
        if outcome == "rollback":
            return releases.rollback(target, current, taken_at, reason=f"canary analyze {path}")
        # A rollback may have held the canary since the snapshot was read: never give it traffic.
        releases.require_not_held(target, current, arms.canary)
        if outcome == "step":
            return releases.canary(target, current, arms.canary)
        return releases.promote(target, current)

    if rollbacks_only and outcome != "rollback":
        options = {**options, "dry_run": True}
    change = apply(scope.root, model, scope.stack, next_release, options, evidence=files, message=message)
    return Analysis(
        model, scope.stack, outcome, decision, snapshot, path, change.commit, change, change.message
    )


def _outcome(action: str, release: Release, canary_weight: int) -> Outcome:
    if action == "promote":
        return "step" if canary_weight < release.analysis.steps[-1] else "promote"
    return "rollback" if action == "rollback" else "hold"


def replay(root: Path, rev: str) -> Replay:
    """Recompute the decision of an analysis commit from the snapshot it committed.

    Raises
    ------
    UserError
        `rev` is not a commit, not an analysis commit (no snapshot trailer), or an A/B
        experiment's commit.
    """
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
