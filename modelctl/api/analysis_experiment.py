"""`ab analyze` and `ab plan`'s traffic: an A/B experiment's counts from Prometheus, its decision committed.

The decision is `modelctl.core.analysis.experiment`'s; this module reads its input (the counts
since the split began, at `EXPERIMENT_LOOKS` instants) and concludes the experiment by commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Literal

from modelctl.api.analysis import (
    DECISION_TRAILER,
    DIGEST_TRAILER,
    SNAPSHOT_TRAILER,
    Scope,
    choose,
    prometheus_url,
    read_counts,
    snapshot_file,
)
from modelctl.api.releases import TransactionOptions, apply, check_policies
from modelctl.core import contract, releases
from modelctl.core.analysis import experiment, window
from modelctl.core.analysis.experiment import ExperimentDecision, ExperimentSnapshot, ab_arms
from modelctl.core.analysis.snapshot import Arms, Source, build_snapshot
from modelctl.core.releases import Proposal
from modelctl.core.schema import Release
from modelctl.repo.prometheus import query_all
from modelctl.repo.state import read_state
from modelctl.repo.transaction import PolicyCheck, ReleaseChange

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
    scope = choose(
        root,
        stack,
        model,
        ab_arms,
        _experiment_run,
        problem=f"has no A/B experiment on {stack} (two versions with traffic and experiment settings)",
        fix=f"split it with 'modelctl ab {model} --split V1=50,V2=50 --stack {stack}' and add "
        f"modelctl:releases.{model}.experiment",
        url=prometheus,
        now=now,
    )
    options: TransactionOptions = {"dry_run": dry_run, "policies": policies, "lock_timeout": lock_timeout}
    return [_experiment(scope, name, options) for name in scope.names]


def _experiment_run(release: Release) -> Callable[[Release | None], bool]:
    """An experiment's run: the states with experiment settings in which both its arms serve."""
    arms = ab_arms(release)
    assert arms is not None  # ab_analyze follows only experiments
    return partial(experiment.running, control=arms[0], treatment=arms[1])


def _experiment(scope: Scope, model: str, options: TransactionOptions) -> Experiment:
    snapshot = _experiment_snapshot(scope, model)
    decision = experiment.analyze(snapshot)
    path = scope.snapshot_path(model)
    if decision.outcome == "continue":
        text = f"ab analyze continue: {model} on {scope.stack}\n\n{'; '.join(decision.reasons)}"
        return Experiment(model, scope.stack, "continue", decision, snapshot, path, None, None, text)
    keep = decision.winner or snapshot.control

    def message(proposal: Proposal) -> str:
        return (
            f"ab analyze {decision.outcome}: {proposal.summary}\n\n{'; '.join(decision.reasons)}\n\n"
            f"{DECISION_TRAILER}: {decision.outcome}\n{SNAPSHOT_TRAILER}: {path}\n"
            f"{DIGEST_TRAILER}: {decision.snapshot_sha256}\n"
        )

    change = apply(
        scope.root,
        model,
        scope.stack,
        lambda t, r, _: releases.conclude(t, r, keep),
        options,
        evidence=snapshot_file(path, snapshot),
        message=message,
    )
    return Experiment(
        model, scope.stack, decision.outcome, decision, snapshot, path, change.commit, change, change.message
    )


def _experiment_snapshot(scope: Scope, model: str) -> ExperimentSnapshot:
    """The experiment's counts since its split began, read at `EXPERIMENT_LOOKS` instants."""
    release = scope.release(model)
    settings = release.experiment
    arms = ab_arms(release)
    assert arms is not None  # ab_analyze chose only experiments
    assert settings is not None
    control, treatment = arms
    taken_at = scope.taken_at
    # The experiment began with the commit that gave the split its settings (`modelctl ab`, or
    # settings added to a running split), not when both versions first served (a canary's).
    began = scope.began(model) or taken_at
    started, notes = scope.counted_from(model, began)
    weights = Arms(control, treatment, release.traffic[control], release.traffic[treatment])
    looks, counts, source = [], None, {}
    for at in experiment.looks_at([started, taken_at], EXPERIMENT_LOOKS + 1)[-EXPERIMENT_LOOKS:]:
        seconds = (at - started).total_seconds()
        queries = window.queries(
            model, seconds, (*window.WINDOW_QUERIES, *experiment.VALUE_QUERIES), scope.bound
        )
        counted = read_counts(scope.url, queries, at, seconds)
        source = {"prometheus": scope.url, "queries": queries}
        counts = build_snapshot(
            model=model,
            stack=scope.stack,
            arms=weights,
            analysis=release.analysis,
            taken_at=at,
            window_start=started,
            step_started=began,
            canary_started=started,
            answers=counted.counts,
            source=source,
            notes=[*notes, *counted.notes(scope.bound)],
        )
        looks.append(experiment.look(at, counts, counted.counts))
    assert counts is not None
    return ExperimentSnapshot(
        model=model,
        stack=scope.stack,
        taken_at=taken_at,
        started=started,
        control=control,
        treatment=treatment,
        positive_class=scope.state.model(model).output.positive_class,
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
    url = prometheus_url(root, read_state(root), stack, prometheus)
    matchers = {"model": model}
    queries = {
        "requests": contract.query("request_rate", matchers, "model", "1h"),
        "labels": contract.query("feedback_rate", matchers, window="1h"),
    }
    answers = query_all(url, queries, datetime.now(UTC))
    return {name: sum(value for _, value in samples) for name, samples in answers.items()}
