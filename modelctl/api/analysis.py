"""What every analysis shares: the releases it looks at, Prometheus' window counts, the snapshot it commits.

An analysis (`analysis_canary`, `analysis_experiment`, `analysis_shadow`) chooses the releases
of one stack with the state, Prometheus' URL, the instant and the stack's history read once
(`choose`, a `Scope` handed down to each release), reads each window's counts from Prometheus
(`read_counts`) for the pure decision in `modelctl.core.analysis`, and commits the decision with
its snapshot (`snapshot_file`, the trailers below).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from pydantic import BaseModel

from modelctl.api.local import local_prometheus
from modelctl.core import contract
from modelctl.core.analysis import window
from modelctl.core.contract import MeshName
from modelctl.core.errors import UserError
from modelctl.core.schema import Release
from modelctl.core.state import State, stack_file
from modelctl.repo import gitutil, prometheus
from modelctl.repo.history import StackChange, covers, release_changes, stack_history
from modelctl.repo.state import read_state

# Trailers of an analysis commit: what was done, the snapshot, and its digest.
DECISION_TRAILER = "Analysis-Decision"
SNAPSHOT_TRAILER = "Analysis-Snapshot"
DIGEST_TRAILER = "Snapshot-Sha256"


# What an analysis follows over time: given a release it looks at, whether a past state of it
# (None: not deployed) belongs to the same run (the same canary serving, the same experiment).
Run = Callable[[Release], Callable[[Release | None], bool]]


@dataclass(frozen=True)
class Scope:
    """The releases an analysis looks at on one stack (`names`), and what every look at them
    shares: the state as read once, where and when to query Prometheus, the mesh whose metrics
    it holds (`mesh`: envoy for the local stack's, else the stack's `monitoring.mesh`), and the
    stack's history (the windows' starts), deep enough to show where each release's `run` began.
    With no release chosen, `url` is empty and nothing else was read."""

    root: Path
    stack: str
    state: State
    names: list[str]
    run: Run
    url: str = ""
    taken_at: datetime = datetime.min
    history: list[StackChange] = dataclasses.field(default_factory=list)
    # How long before a window's start its value may be read: Prometheus' lookback delta.
    bound: str = contract.LOOKBACK_DELTA
    mesh: MeshName = "istio"

    def release(self, model: str) -> Release:
        return self.state.stack(self.stack).config.releases[model]

    def changes(self, model: str) -> list[StackChange]:
        """The commits that changed `model`'s release on the stack, newest first."""
        return release_changes(self.history, model)

    def began(self, model: str) -> datetime | None:
        """When `model`'s current run began: the commit from which every change of its release
        is in it; None when the release is not in it."""
        holds = self.run(self.release(model))
        dates = [c.date for c in itertools.takewhile(lambda c: holds(c.release(model)), self.changes(model))]
        return dates[-1] if dates else None

    def counted_from(self, model: str, began: datetime) -> tuple[datetime, list[str]]:
        """Where a window that `began` (a commit's date) starts counting, with a note when not
        there: a commit dated after `taken_at` was made by a clock ahead, and a window starting
        in the future would count nothing (a failing canary read as "no requests"); it counts
        from the newest change of `model`'s release dated before now (its previous state's
        start: more requests than the step's own, never none)."""
        from modelctl.core.analysis.judge import duration_text

        if began <= self.taken_at:
            return began, []
        earlier = next((c for c in self.changes(model) if c.date <= self.taken_at), None)
        start = earlier.date if earlier else self.taken_at
        ahead = began - self.taken_at
        return start, [
            f"the commit that began this window is dated {duration_text(ahead.total_seconds())} after "
            f"Prometheus' clock ({began.isoformat()}; a clock ahead where it was committed): counted from "
            f"{start.isoformat()}, the change before it"
        ]

    def snapshot_path(self, model: str) -> str:
        """Where `model`'s snapshot is committed: analysis/<stack>/<model>/<UTC time>.json."""
        return f"analysis/{self.stack}/{model}/{self.taken_at.astimezone(UTC):%Y%m%dT%H%M%SZ}.json"


def choose(
    root: Path,
    stack: str,
    model: str | None,
    arms: Callable[[Release], object],
    run: Run,
    *,
    problem: str,
    fix: str,
    url: str | None,
    now: datetime | None,
    history: bool = True,
) -> Scope:
    """The models on `stack` (only `model`, when given) whose release has `arms` (not None), with
    Prometheus' URL (`url`, else see `prometheus_url`), the instant `now` (default: Prometheus'
    own clock, which the machine running the analysis cannot move) and, when `history`, the
    stack's history back to where each release's `run` began (a shallow clone is deepened until
    it shows that). With no release chosen nothing else is read: a stack without one needs no
    Prometheus (prod may have none).

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
        return Scope(root, stack, state, names, run)
    if gitutil.dirty_paths(root, stack_file(stack)):
        # The release is read from the file, but its window from the commits that changed it.
        raise UserError(
            stack_file(stack),
            "has uncommitted changes, and an analysis window starts at the commit that changed the release",
            "commit the change first (release commands commit unless --no-commit), or discard it",
        )
    address, mesh = prometheus_source(root, state, stack, url)

    def enough(past: list[StackChange]) -> bool:
        return all(covers(past, name, run(config.releases[name])) for name in names)

    return Scope(
        root,
        stack,
        state,
        names,
        run,
        address,
        now or prometheus.clock(address),
        stack_history(root, stack, enough=enough) if history else [],
        prometheus.lookback_delta(address),
        mesh,
    )


def prometheus_url(root: Path, state: State, stack: str, given: str | None) -> str:
    """`given`, else the stack's monitoring.prometheus_url, else the local stack's.

    Raises
    ------
    UserError
        None of them.
    """
    return prometheus_source(root, state, stack, given)[0]


def prometheus_source(root: Path, state: State, stack: str, given: str | None) -> tuple[str, MeshName]:
    """(`prometheus_url`, the mesh whose request metrics it holds): the local stack's Prometheus
    scrapes Envoy, its data plane; any other holds the stack's `monitoring.mesh`.

    Raises
    ------
    UserError
        No Prometheus URL.
    """
    monitoring = state.stack(stack).config.environment.monitoring
    url = given or monitoring.prometheus_url
    if url:
        return url, monitoring.mesh
    local = local_prometheus(root, stack)
    if local is None:
        raise UserError(
            stack_file(stack),
            "no Prometheus to query",
            "pass --prometheus URL, set modelctl:environment.monitoring.prometheus_url, or run 'modelctl up'",
        )
    return local, "envoy"


def read_counts(url: str, queries: dict[str, str], at: datetime, seconds: float) -> window.WindowRead:
    """The window counts of `queries` (from `window.queries`) over the `seconds` before `at`,
    exact: the first parts, then whether the series without a value at the window's start
    existed before it, then the samples of the series reset within the window or counted from
    their first sample in it (see `modelctl.core.analysis.window`).

    Raises
    ------
    UserError
        Prometheus failing (see `modelctl.repo.prometheus`).
    """
    answers = prometheus.query_all(url, window.first_queries(queries), at)
    history = window.history_queries(queries, answers)
    if history:
        answers |= prometheus.query_all(url, history, at)
    wanted = {key: window.sample_query(*key, seconds) for key in window.sampled(answers)}
    samples = prometheus.query_samples(url, wanted, at) if wanted else None
    return window.WindowRead(window.window_counts(answers, samples), window.late_starts(answers))


def snapshot_file(path: str, snapshot: BaseModel) -> dict[str, str]:
    """The snapshot as the file committed with its decision: indented JSON at `path`."""
    return {path: orjson.dumps(snapshot.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n"}
