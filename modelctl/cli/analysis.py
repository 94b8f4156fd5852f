"""How every analysis command prints what it did: `canary analyze` and `ab analyze` alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from modelctl.repo.transaction import ReleaseChange


class _Decision(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class Applied(Protocol):
    """What an analysis did with its decision: a canary's `api.Analysis`, an experiment's `api.Experiment`."""

    @property
    def model(self) -> str: ...
    @property
    def stack(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def commit(self) -> str | None: ...
    @property
    def snapshot_path(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def change(self) -> ReleaseChange | None: ...
    @property
    def decision(self) -> _Decision: ...


def applied_data(result: Applied, dry_run: bool) -> dict[str, object]:
    """An analysis result as --json prints it."""
    return {
        "model": result.model,
        "stack": result.stack,
        "outcome": result.outcome,
        "commit": result.commit,
        "snapshot": _kept(result, dry_run),
        "message": result.message,
        "diff": result.change.diff if result.change else "",
        "decision": result.decision.to_dict(),
    }


def applied_head(result: Applied, dry_run: bool) -> str:
    """The first line of an analysis result: the outcome, and the commit made or why none."""
    done = (
        f"committed {result.commit[:12]}"
        if result.commit
        else "dry run: nothing committed"
        if dry_run
        else "nothing committed"
    )
    kept = _kept(result, dry_run)
    unkept = (
        "snapshot not committed on a hold; --record commits it"
        if result.outcome == "hold"
        else "snapshot not committed"
    )
    where = (f"would commit snapshot {kept}" if dry_run else f"snapshot {kept}") if kept else unkept
    return f"{result.outcome.upper()} {result.model} on {result.stack}: {done} ({where})"


def _kept(result: Applied, dry_run: bool) -> str | None:
    """The snapshot's path in the repository: committed, or where a dry run would commit it (a
    hold or a continuing experiment changes no release, and commits no snapshot unless recorded)."""
    return result.snapshot_path if result.commit or (dry_run and result.change is not None) else None
