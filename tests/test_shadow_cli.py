"""`modelctl shadow report` and `canary --evidence` refuse what they cannot use in one line, and
change nothing; `shadow <model> <version>` still reaches the release command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.factories import full_docs, run_git, write_repo

MODEL = "fraud-detection"
# Port 9 (discard) is closed here: a report that gets as far as Prometheus fails to reach it.
REPORT = ("shadow", "report", "--stack", "prod", "--prometheus", "http://127.0.0.1:9")


def errors(err: str) -> list[str]:
    """The error lines of stderr (progress lines aside)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def shadowed(tmp_path: Path) -> Path:
    """prod: fraud-detection v1.1.0 serving, v1.2.0 mirrored 10%; churn with no shadow."""
    return write_repo(tmp_path / "repo", *full_docs())


def test_a_model_without_a_shadow_is_refused_in_one_line(shadowed: Path, cli: Cli) -> None:
    code, _, err = cli(shadowed, *REPORT, "--model", "churn")
    assert code == 1
    assert errors(err) == [
        "error: Pulumi.prod.yaml: churn mirrors no version on prod; "
        "start one with 'modelctl shadow churn VERSION --percent 100 --stack prod'"
    ]


def test_unreachable_prometheus_and_a_bad_window_are_one_line_errors(shadowed: Path, cli: Cli) -> None:
    code, _, err = cli(shadowed, *REPORT, "--window", "1h")
    assert code == 1
    assert len(errors(err)) == 1
    assert "Prometheus did not answer" in err
    code, _, err = cli(shadowed, "shadow", "report", "--stack", "prod", "--window", "an hour")
    assert code == 1
    [line] = errors(err)
    assert line.startswith("error: --window: ")


def test_evidence_for_another_version_is_refused_and_nothing_changes(
    shadowed: Path, cli: Cli, tmp_path: Path
) -> None:
    head = run_git(shadowed, "rev-parse", "HEAD")
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "stack": "staging",
                "reports": [
                    {
                        "model": MODEL,
                        "stack": "staging",
                        "shadow": "v1.0.0",
                        "taken_at": "2026-11-29T12:00:00+00:00",
                    }
                ],
            }
        )
    )
    code, _, err = cli(shadowed, "canary", MODEL, "v1.2.0", "--stack", "staging", "--evidence", str(report))
    assert code == 1
    assert f"is not a shadow report of {MODEL} v1.2.0 on staging" in err
    (tmp_path / "broken.json").write_text("{")
    code, _, err = cli(
        shadowed, "canary", MODEL, "v1.2.0", "--stack", "staging", "--evidence", str(tmp_path / "broken.json")
    )
    assert code == 1
    assert "cannot read the shadow report" in err
    assert run_git(shadowed, "rev-parse", "HEAD") == head
    assert run_git(shadowed, "status", "--porcelain") == ""


def test_the_release_command_is_still_shadow_model_version(shadowed: Path, cli: Cli) -> None:
    code, out, err = cli(
        shadowed, "shadow", "churn", "v2.1.0-rc.1", "--percent", "20", "--stack", "prod", "--dry-run"
    )
    assert code == 0, err
    assert "v2.1.0-rc.1" in out
