"""Time a laptop cannot move (case 13): `check` refuses commits dated by a wrong clock, history reads
a commit as made no earlier than its parent, and analyses measure from Prometheus' clock, so a
step committed by a clock ahead neither blinds them nor passes its interval early."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelctl import api
from modelctl.core.state import load_state
from tests.conftest import Cli
from tests.factories import commit_at, redate_head, run_git
from tests.promstack import MODEL, Pod, PrometheusServer, pods
from tests.test_canary_analyze import STACK, analyze, canary_repo

__all__ = ["canary_repo", "pods"]  # the fixtures, used by name


def dated(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat(timespec="seconds")


def commit_dated(repo: Path, delta: timedelta, message: str) -> None:
    (repo / "NOTES.txt").write_text(f"{message}\n")
    commit_at(repo, dated(delta), message, "NOTES.txt")


@pytest.mark.parametrize(
    ("delta", "problem"),
    [
        (timedelta(days=-2), "before its parent"),
        (timedelta(minutes=-20), "before its parent"),
        (timedelta(minutes=10), "after this check's clock: made by a clock that is ahead"),
        (timedelta(days=400), "after this check's clock: made by a clock that is ahead"),
        (timedelta(minutes=-2), None),
        (timedelta(minutes=2), None),
    ],
    ids=["2 days behind", "20 min behind", "10 min ahead", "a year ahead", "2 min behind", "2 min ahead"],
)
def test_check_refuses_a_commit_dated_by_a_clock_beyond_the_tolerance(
    repo: Path, cli: Cli, delta: timedelta, problem: str | None
) -> None:
    base = run_git(repo, "rev-parse", "HEAD").strip()
    commit_dated(repo, timedelta(0), "on time")
    commit_dated(repo, delta, "by a wrong clock")
    for args in (("--base", base), ()):
        code, out, err = cli(repo, "check", *args)
        if problem is None:
            assert code == 0, err
            assert out.strip().endswith("commit dates within 5 min of their parents' and this clock")
            continue
        assert code == 1
        [error] = [line for line in err.splitlines() if line.startswith("error: ")]
        assert error.startswith(
            f"error: commit {run_git(repo, 'rev-parse', '--short=12', 'HEAD').strip()}: is dated "
        )
        assert problem in error
        assert error.endswith("git rebase --force-rebase " + (base if args else "HEAD~1"))


def test_check_with_base_reads_every_commit_since_it(repo: Path, cli: Cli) -> None:
    base = run_git(repo, "rev-parse", "HEAD").strip()
    commit_dated(repo, timedelta(days=-3), "behind")
    commit_dated(repo, timedelta(0), "on time again")
    assert cli(repo, "check")[0] == 0  # HEAD alone is fine
    code, _, err = cli(repo, "check", "--base", base)
    assert code == 1
    assert "before its parent" in err


def test_case_13_a_canary_committed_by_a_clock_two_days_behind_does_not_pass_prods_soak(
    repo: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 13: staging's canary rolled back, its hold cleared, then the canary committed by a
    clock two days behind: prod refuses v1.1.0 (it has served on staging for seconds), and
    `check` refuses the commit."""
    redate_head(repo, dated(timedelta(days=-3)))
    assert cli(repo, "rollback", MODEL, "--stack", "staging", "--reason", "start over")[0] == 0
    assert (
        cli(repo, "release-hold", "clear", MODEL, "v1.1.0", "--stack", "staging", "--reason", "retry")[0] == 0
    )
    base = run_git(repo, "rev-parse", "HEAD").strip()
    code, _, err = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "prod", "--dry-run")
    assert "v1.1.0 of fraud-detection does not serve on staging, and prod requires 24h there first" in err
    past = dated(timedelta(days=-2))
    with monkeypatch.context() as clock:
        clock.setenv("GIT_COMMITTER_DATE", past)
        clock.setenv("GIT_AUTHOR_DATE", past)
        assert cli(repo, "canary", MODEL, "v1.1.0", "--stack", "staging")[0] == 0
    code, _, err = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "prod", "--dry-run")
    assert code == 1
    assert (
        "v1.1.0 of fraud-detection has served on staging for only 0m, and prod requires 24h there first"
        in err
    )
    code, _, err = cli(repo, "check", "--base", base)
    assert code == 1
    assert "before its parent" in err
    # `history` shows when it took effect, and the date its clock wrote.
    _, out, _ = cli(repo, "history", MODEL, "--stack", "staging")
    assert f" (dated {past}" in out.splitlines()[0]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (make tools)")
def test_case_13_a_step_dated_ahead_does_not_blind_the_analysis(
    canary_repo: Path, tmp_path: Path, pods: list[Pod], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 13's second half: a staging step committed by a clock 10 minutes ahead, then 2,500
    canary requests with 100 errors. The window counts from the change before it (never from
    the future, which read as "0 requests ... check its route") and the failing canary is
    rolled back (a healthy one waits for its interval from the step's own date: test_judge)."""
    baseline, canary = Pod("baseline", "v1.0.0"), Pod("canary", "v1.1.0")
    pods += [baseline.start(), canary.start()]
    prometheus = PrometheusServer(tmp_path, pods).start()
    try:
        time.sleep(1.5)
        ahead = dated(timedelta(minutes=10))
        with monkeypatch.context() as clock:
            clock.setenv("GIT_COMMITTER_DATE", ahead)
            clock.setenv("GIT_AUTHOR_DATE", ahead)
            api.canary(canary_repo, MODEL, "v1.1.0", stack=STACK)
        baseline.serve(7_500, 8, seed=3)
        canary.serve(2_500, 100, seed=4)
        prometheus.scraped(10_000)
        code, [analysis] = analyze(cli, canary_repo, prometheus.url, "--dry-run")
    finally:
        prometheus.stop()
    assert (code, analysis["outcome"]) == (2, "rollback")
    decision: dict[str, Any] = analysis["decision"]  # type: ignore[assignment]
    errors = next(e for e in decision["evidence"] if e["metric"] == "errors")
    assert errors["samples"] == {"baseline": 7_500, "canary": 2_500}
    [note] = [w for w in decision["warnings"] if "dated" in w]
    assert note.startswith("the commit that began this window is dated 10 min after Prometheus' clock")
    assert not any(w.startswith("no traffic") for w in decision["warnings"])
    release = load_state(canary_repo).stack(STACK).config.releases[MODEL]
    assert release.traffic == {"v1.0.0": 90, "v1.1.0": 10}  # a dry run: nothing written
