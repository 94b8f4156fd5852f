"""`modelctl ab analyze` against a real Prometheus scraping a real exposition endpoint: continue
(exit 3, nothing committed), a winner concluded by one commit, one-line errors; and the stack
file's experiment settings refused in one line when incomplete."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from modelctl import api
from modelctl.core import yamlio
from tests.conftest import Cli
from tests.factories import run_git
from tests.test_canary_analyze import MODEL, STACK, Exposition, exposition, prometheus, scraped

__all__ = ["exposition", "prometheus"]  # the fixtures, used by name

EXPERIMENT = {"metric": "accuracy", "effect": 0.05, "min_duration": "0s", "guardrails": ["errors", "recall"]}


def set_experiment(root: Path, settings: dict[str, object]) -> None:
    path = root / f"Pulumi.{STACK}.yaml"
    doc = yamlio.load(path)
    doc["config"]["modelctl:releases"][MODEL]["experiment"] = settings
    yamlio.dump_file(path, doc)


@pytest.fixture
def ab_repo(repo: Path) -> Path:
    """staging split 50/50 between v1.0.0 (the control) and v1.1.0, with experiment settings."""
    api.ab(repo, MODEL, stack=STACK, split={"v1.0.0": 50, "v1.1.0": 50}, experiment=EXPERIMENT)
    return repo


def label(exposition: Exposition, version: str, right: int, wrong: int) -> None:
    """`right + wrong` answered requests of `version`, every one labelled."""
    exposition.requests.labels(MODEL, version, "200").inc(right + wrong)
    exposition.feedback.labels(MODEL, version, "fraud", "fraud").inc(right)
    exposition.feedback.labels(MODEL, version, "fraud", "legit").inc(wrong)


def analyze(cli: Cli, root: Path, url: str, *flags: str) -> tuple[int, list[dict[str, object]], str]:
    code, out, err = cli(root, "ab", "analyze", "--stack", STACK, "--prometheus", url, "--json", *flags)
    assert "Traceback" not in err
    return code, json.loads(out)["analyses"], err


def test_too_few_labels_continue_commit_nothing_and_say_what_is_needed(
    ab_repo: Path, exposition: Exposition, prometheus: str, cli: Cli
) -> None:
    label(exposition, "v1.0.0", 90, 10)
    label(exposition, "v1.1.0", 95, 5)
    scraped(prometheus, 200)
    head = run_git(ab_repo, "rev-parse", "HEAD")
    code, (result,), _ = analyze(cli, ab_repo, prometheus)
    assert code == 3
    assert result["outcome"] == "continue"
    assert result["commit"] is None
    assert result["decision"]["needs"]["labels"] > 0  # type: ignore[index]
    assert run_git(ab_repo, "rev-parse", "HEAD") == head
    code, out, _ = cli(ab_repo, "ab", "analyze", "--stack", STACK, "--prometheus", prometheus)
    assert code == 3
    assert "label coverage: v1.0.0 100.0% (100 of 100), v1.1.0 100.0% (100 of 100)" in out


def test_a_better_treatment_takes_all_traffic_in_one_commit(
    ab_repo: Path, exposition: Exposition, prometheus: str, cli: Cli
) -> None:
    label(exposition, "v1.0.0", 1600, 400)
    label(exposition, "v1.1.0", 1950, 50)
    scraped(prometheus, 4000)
    code, (result,), _ = analyze(cli, ab_repo, prometheus)
    assert code == 0
    assert (result["outcome"], result["decision"]["winner"]) == ("winner", "v1.1.0")  # type: ignore[index]
    release = yamlio.load(ab_repo / f"Pulumi.{STACK}.yaml")["config"]["modelctl:releases"][MODEL]
    assert release["traffic"] == {"v1.0.0": 0, "v1.1.0": 100}
    # The experiment ends with its split (its settings are in the snapshot), so the next
    # canary is a canary that 'canary analyze' judges.
    assert "experiment" not in release
    assert json.loads((ab_repo / str(result["snapshot"])).read_text())["experiment"]["metric"] == "accuracy"
    files = run_git(ab_repo, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(files) == sorted([f"Pulumi.{STACK}.yaml", str(result["snapshot"])])
    code, out, _ = cli(ab_repo, "ab", "analyze", "--stack", STACK, "--prometheus", prometheus)
    assert (code, out.strip()) == (0, "no A/B experiment to analyze")
    code, out, err = cli(ab_repo, "judge", "--replay", str(result["commit"]))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "is an A/B experiment's commit" in err
    assert "replay recomputes canary decisions only" in err


def test_canary_analyze_leaves_an_experiment_alone(ab_repo: Path, cli: Cli) -> None:
    """A 50/50 split without sticky sessions is a canary shape; its experiment settings keep
    `canary analyze` from stepping it."""
    code, out, _ = cli(ab_repo, "canary", "analyze", "--stack", STACK, "--prometheus", "http://127.0.0.1:9")
    assert (code, out.strip()) == (0, "skipped staging: no release in a canary state")


def test_a_model_without_an_experiment_is_one_line(repo: Path, cli: Cli) -> None:
    code, _, err = cli(
        repo, "ab", "analyze", "--stack", STACK, "--model", MODEL, "--prometheus", "http://127.0.0.1:9"
    )
    assert code == 1
    assert [line.startswith("error: ") for line in err.splitlines()].count(True) == 1
    assert f"{MODEL} has no A/B experiment on {STACK}" in err


def test_an_unreachable_prometheus_is_one_line(ab_repo: Path, cli: Cli) -> None:
    code, _, err = cli(ab_repo, "ab", "analyze", "--stack", STACK, "--prometheus", "http://127.0.0.1:9")
    assert code == 1
    assert [line.startswith("error: ") for line in err.splitlines()].count(True) == 1
    assert "Prometheus did not answer" in err


def test_value_without_its_spread_is_refused_in_one_line(repo: Path, cli: Cli) -> None:
    set_experiment(repo, {"metric": "value"})
    code, _, err = cli(repo, "check", "--stack", STACK)
    assert code == 1
    line = next(line for line in err.splitlines() if "value_sd" in line)
    assert f"Pulumi.{STACK}.yaml" in line
    assert f"modelctl:releases.{MODEL}.experiment" in line


def test_stacks_without_an_experiment_need_no_prometheus(repo: Path, cli: Cli) -> None:
    """Every stack by default, and none runs an experiment or names a Prometheus: nothing to do."""
    code, out, err = cli(repo, "ab", "analyze")
    assert (code, out.strip()) == (0, "no A/B experiment to analyze"), err


def test_a_canary_is_refused_while_experiment_settings_would_make_it_an_experiment(
    repo: Path, cli: Cli
) -> None:
    set_experiment(repo, EXPERIMENT)
    run_git(repo, "commit", "-q", "-am", "staging: experiment settings ahead of an experiment")
    head = run_git(repo, "rev-parse", "HEAD")
    code, _, err = cli(repo, "canary", MODEL, "v1.1.0", "--stack", STACK)
    assert code == 1
    assert err.count("\n") == 1
    assert f"releases.{MODEL}.experiment" in err
    assert "'canary analyze' never judges" in err
    assert run_git(repo, "rev-parse", "HEAD") == head


def test_an_uncommitted_split_is_refused_in_one_line(repo: Path, cli: Cli) -> None:
    """The window starts at the commit that changed the release: an uncommitted split has none."""
    code, _, err = cli(
        repo, "ab", MODEL, "--split", "v1.0.0=50,v1.1.0=50", "--stack", STACK, "--metric", "accuracy",
        "--effect", "0.05", "--no-commit",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(
        repo, "ab", "analyze", "--stack", STACK, "--prometheus", "http://127.0.0.1:9", "--dry-run"
    )
    assert (code, out) == (1, "")
    [error] = [line for line in err.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: Pulumi.{STACK}.yaml: has uncommitted changes")


def test_the_experiment_counts_from_the_commit_that_began_it_and_plots_its_first_look(
    repo: Path, exposition: Exposition, prometheus: str, cli: Cli, tmp_path: Path
) -> None:
    """A canary at 50% served 2,000 labelled requests before `modelctl ab` gave the split its
    settings: the experiment counts only the 200 after that commit (not since both versions
    first served together), and its plot shows the estimate and its interval from the first
    look that has labels."""
    api.canary(repo, MODEL, "v1.1.0", stack=STACK, weight=50)
    label(exposition, "v1.0.0", 800, 200)
    label(exposition, "v1.1.0", 990, 10)
    scraped(prometheus, 2000)
    time.sleep(1.5)  # git dates have whole seconds: the experiment begins after these requests
    api.ab(repo, MODEL, stack=STACK, split={"v1.0.0": 50, "v1.1.0": 50}, experiment=EXPERIMENT)
    label(exposition, "v1.0.0", 90, 10)
    label(exposition, "v1.1.0", 95, 5)
    scraped(prometheus, 2200)
    report = tmp_path / "ab.html"
    code, (result,), _ = analyze(cli, repo, prometheus, "--dry-run", "--html", str(report))
    assert code == 3
    decision = result["decision"]
    assert decision["requests"] == {"v1.0.0": 100, "v1.1.0": 100}  # type: ignore[index]
    assert decision["labelled"] == {"v1.0.0": 100, "v1.1.0": 100}  # type: ignore[index]
    figure = report.read_text().split("<figcaption>accuracy:", 1)[1].split("</figure>", 1)[0]
    assert "<circle" in figure
    assert "no labels yet" not in figure


def test_ab_takes_the_experiments_settings_or_refuses_in_one_line(repo: Path, cli: Cli) -> None:
    head = run_git(repo, "rev-parse", "HEAD")
    code, _, err = cli(repo, "ab", MODEL, "--split", "v1.0.0=50,v1.1.0=50", "--stack", STACK)
    assert code == 1
    [error] = err.splitlines()
    assert error.startswith(f"error: Pulumi.{STACK}.yaml: config.modelctl:releases.{MODEL}.experiment: ")
    assert "needs its metric and its effect" in error
    assert error.endswith(
        "pass --metric and --effect, e.g. --metric accuracy --effect 0.02 ('modelctl ab plan' sizes the effect)"
    )
    code, _, err = cli(
        repo, "ab", MODEL, "--split", "v1.0.0=40,v1.1.0=30,v1.2.0=30", "--stack", STACK, "--metric", "accuracy",
        "--effect", "0.02",
    )  # fmt: skip
    assert code == 1
    assert "an experiment compares two" in err
    assert run_git(repo, "rev-parse", "HEAD") == head
    code, out, err = cli(
        repo,
        "ab",
        MODEL,
        "--split",
        "v1.0.0=50,v1.1.0=50",
        "--stack",
        STACK,
        "--metric",
        "recall",
        "--effect",
        "0.03",
    )
    assert code == 0, err
    release = yamlio.load(repo / f"Pulumi.{STACK}.yaml")["config"]["modelctl:releases"][MODEL]
    assert release["experiment"] == {
        "metric": "recall",
        "guardrails": ["errors", "latency"],
        "alpha": 0.05,
        "effect": 0.03,
        "min_duration": "7d",
        "max_duration": "28d",
    }
    _, out, _ = cli(repo, "status", "--stack", STACK)
    assert out.strip().endswith("v1.0.0 50%, v1.1.0 50%; experiment v1.1.0 from v1.0.0")
    code, out, _ = cli(repo, "canary", "analyze", "--stack", STACK, "--prometheus", "http://127.0.0.1:9")
    assert (code, out.strip()) == (0, "skipped staging: no release in a canary state")


def test_settings_written_beside_the_release_are_kept_unless_given(repo: Path, cli: Cli) -> None:
    set_experiment(repo, {"metric": "f1", "effect": 0.04, "min_duration": "14d"})
    run_git(repo, "commit", "-q", "-am", "staging: the experiment's settings, by hand")
    code, _, err = cli(
        repo, "ab", MODEL, "--split", "v1.0.0=50,v1.1.0=50", "--stack", STACK, "--effect", "0.05"
    )
    assert code == 0, err
    release = yamlio.load(repo / f"Pulumi.{STACK}.yaml")["config"]["modelctl:releases"][MODEL]
    assert {k: release["experiment"][k] for k in ("metric", "effect", "min_duration")} == {
        "metric": "f1",
        "effect": 0.05,
        "min_duration": "14d",
    }
