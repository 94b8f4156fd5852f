"""The Python API: release and registry operations called as plain functions, returning data."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelctl import api
from modelctl.core.errors import UserError, UserErrors
from modelctl.core.state import State, load_state
from tests.factories import run_git
from tests.test_releases_cli import MODEL, build_repo, git_picture, head_files, traffic


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repo(tmp_path / "repo")


def test_a_canary_then_a_promotion_are_one_commit_each(repo: Path) -> None:
    started = api.canary(repo, MODEL, "v1.1.0", stack="staging", weight=20)
    assert (started.action, started.model, started.stack) == ("canary", MODEL, "staging")
    assert dict(started.release.traffic) == {"v1.0.0": 80, "v1.1.0": 20}
    assert started.commit == run_git(repo, "rev-parse", "HEAD").strip()
    assert head_files(repo) == ["Pulumi.staging.yaml"]
    assert "+        v1.1.0: 20" in started.diff

    promoted = api.promote(repo, MODEL, stack="staging")
    assert traffic(repo, "staging") == {"v1.0.0": 0, "v1.1.0": 100}
    assert promoted.commit is not None
    assert promoted.commit != started.commit


def test_a_dry_run_returns_the_change_and_writes_nothing(repo: Path) -> None:
    before = git_picture(repo)
    change = api.canary(repo, MODEL, "v1.1.0", stack="staging", dry_run=True)
    assert change.dry_run
    assert change.commit is None
    assert "v1.1.0" in change.diff
    assert git_picture(repo) == before


def test_without_commit_the_stack_file_is_only_written(repo: Path) -> None:
    change = api.canary(repo, MODEL, "v1.1.0", stack="staging", weight=10, commit=False)
    assert change.commit is None
    assert traffic(repo, "staging") == {"v1.0.0": 90, "v1.1.0": 10}
    assert run_git(repo, "status", "--porcelain").split() == ["M", "Pulumi.staging.yaml"]


def test_the_policy_check_is_a_parameter_and_a_violation_changes_nothing(repo: Path) -> None:
    seen: list[tuple[dict[str, int], str]] = []

    def refuse(state: State, stack: str) -> None:
        seen.append((dict(state.stack(stack).config.releases[MODEL].traffic), stack))
        raise UserError("Pulumi.staging.yaml", "policy no-canaries: a canary is not allowed", "do not")

    before = git_picture(repo)
    with pytest.raises(UserError, match="no-canaries"):
        api.canary(repo, MODEL, "v1.1.0", stack="staging", weight=30, policies=refuse)
    assert seen == [({"v1.0.0": 70, "v1.1.0": 30}, "staging")]  # it saw the proposed state
    assert git_picture(repo) == before


def test_every_traffic_mode_as_a_function(repo: Path) -> None:
    api.ab(
        repo,
        MODEL,
        stack="staging",
        split={"v1.0.0": 50, "v1.1.0": 50},
        sticky=True,
        experiment={"metric": "accuracy", "effect": 0.02},
    )
    assert traffic(repo, "staging") == {"v1.0.0": 50, "v1.1.0": 50}
    rolled_back = api.rollback(repo, MODEL, stack="staging")
    assert traffic(repo, "staging") == {"v1.0.0": 100}
    assert list(rolled_back.release.held) == ["v1.1.0"]
    assert not api.rollback(repo, MODEL, stack="staging").changed
    cleared = api.clear_hold(repo, MODEL, "v1.1.0", stack="staging", reason="the A/B was inconclusive")
    assert cleared.release.held == {}

    mirrored = api.shadow(repo, MODEL, "v1.2.0", stack="staging", percent=10)
    assert mirrored.release.shadow is not None
    assert mirrored.release.shadow.version == "v1.2.0"
    assert api.shadow_off(repo, MODEL, stack="staging").release.shadow is None

    green = api.bluegreen(repo, MODEL, "v1.1.0", stack="staging")
    assert dict(green.release.traffic) == {"v1.0.0": 100, "v1.1.0": 0}
    api.bluegreen_switch(repo, MODEL, stack="staging")
    assert traffic(repo, "staging") == {"v1.0.0": 0, "v1.1.0": 100}
    assert api.rollback(repo, MODEL, stack="staging", to="v1.0.0").release.traffic["v1.0.0"] == 100


def test_deprecate_and_revoke_return_the_status_change(repo: Path) -> None:
    deprecated = api.deprecate(repo, MODEL, "v1.2.0")
    assert (deprecated.status, deprecated.commit) == (
        "deprecated",
        run_git(repo, "rev-parse", "HEAD").strip(),
    )
    revoked = api.revoke(repo, MODEL, "v1.2.0", commit=False)
    assert revoked.status == "revoked"
    assert revoked.commit is None
    assert load_state(repo).model(MODEL).versions["v1.2.0"].status == "revoked"


def test_revoking_a_served_version_is_refused_with_the_rollback_to_run(repo: Path) -> None:
    before = git_picture(repo)
    with pytest.raises((UserError, UserErrors), match="modelctl rollback fraud-detection"):
        api.revoke(repo, MODEL, "v1.0.0")
    assert git_picture(repo) == before
