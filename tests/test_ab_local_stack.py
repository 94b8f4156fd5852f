"""An A/B experiment end to end on the local stack: two versions that truly differ in accuracy
(one trained on a deliberately weaker configuration), a 50/50 split, traffic with feedback
labels through the gateway, and `modelctl ab analyze` concluding for the better version by
one commit with its snapshot. Every wait is bounded; the finalizer stops the stack by its pids
(`modelctl down`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelctl.core import contract, yamlio
from modelctl.repo import registry
from tests import pipeline_repo
from tests.factories import run_git, stack_doc
from tests.test_local_stack import modelctl, up

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local-stack")]

MODEL = pipeline_repo.MODEL
STACK = "dev"
WEAK, STRONG = "v1.2.0", "v1.0.0"
REQUESTS = 2000
EXPERIMENT = {"metric": "accuracy", "effect": 0.03, "min_duration": "0s", "guardrails": ["errors"]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """v1.0.0 (10 boosting rounds, about 97% accurate on the held-out rows) and v1.2.0 (one
    round at a tiny learning rate: it flags too much as fraud, about 90%), the weak one serving
    dev, then split 50/50 with it by 'modelctl ab'."""
    root = pipeline_repo.copy(
        pipeline_repo.template(tmp_path_factory), tmp_path_factory.mktemp("ab") / "repo"
    )
    with pytest.MonkeyPatch.context() as patch:
        for key, value in pipeline_repo.GIT_ENV.items():
            patch.setenv(key, value)
        pipeline_repo.set_train_param(root, "max_iter", 1)
        pipeline_repo.set_train_param(root, "learning_rate", 0.01)
        pipeline_repo.repro_and_commit(root, "train fraud-detection: one round, a weak configuration")
        registry.register(root, MODEL, version=WEAK)
    pipeline_repo.push_all(root)
    doc = stack_doc({WEAK: 100}, namespace=f"models-{STACK}")
    # One pod per version: feedback goes to the pod that answered (labels across replicas: issue 23).
    doc["config"]["modelctl:releases"][MODEL]["replicas"] = {"min": 1}
    yamlio.dump_file(root / f"Pulumi.{STACK}.yaml", doc)
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", "dev serves the weak version")
    split = modelctl(root, "ab", MODEL, "--split", f"{WEAK}=50,{STRONG}=50", "--stack", STACK)
    assert split.returncode == 0, split.stderr
    doc = yamlio.load(root / f"Pulumi.{STACK}.yaml")
    doc["config"]["modelctl:releases"][MODEL]["experiment"] = EXPERIMENT
    yamlio.dump_file(root / f"Pulumi.{STACK}.yaml", doc)
    run_git(root, "commit", "-q", "-am", "dev: the experiment's settings")
    yield root
    modelctl(root, "down", "--stack", STACK)


@pytest.fixture(scope="module")
def labelled(repo: Path) -> dict[str, Any]:
    """The stack up, REQUESTS requests sent with their true labels, and Prometheus having scraped them."""
    stack = up(repo, STACK)
    sent = modelctl(repo, "traffic", "--stack", STACK, "--requests", str(REQUESTS), "--feedback", "--json")
    assert sent.returncode == 0, sent.stderr
    summary = json.loads(sent.stdout)
    assert summary["feedback"] > 0.95 * REQUESTS
    promql = f"sum({contract.FEEDBACK.name}{{model={MODEL!r}}})".replace("'", '"')
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = httpx.get(f"{stack['prometheus']}/api/v1/query", params={"query": promql}, timeout=10).json()
        found = result["data"]["result"]
        if found and float(found[0]["value"][1]) >= summary["feedback"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("Prometheus did not scrape every label within 30 s")
    # One more scrape interval, so that the window's last samples hold every label.
    time.sleep(2)
    return {**stack, "traffic": summary}


def test_plan_reads_the_models_label_rate(repo: Path, labelled: dict[str, Any]) -> None:
    proc = modelctl(
        repo, "ab", "plan", "--metric", "accuracy", "--baseline", "0.9", "--effect", "0.03",
        "--stack", STACK, "--model", MODEL, "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["labels"] > 0
    assert plan["labels_per_second"] > 0
    assert "Prometheus" in plan["rate_source"]


def test_label_coverage_is_what_was_labelled(repo: Path, labelled: dict[str, Any]) -> None:
    # Counted exactly: PromQL's increase() had reported 35.7% coverage with every request labelled.
    proc = modelctl(repo, "ab", "analyze", "--stack", STACK, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    [analysis] = json.loads(proc.stdout)["analyses"]
    decision = analysis["decision"]
    assert sum(decision["requests"].values()) == REQUESTS
    assert sum(decision["labelled"].values()) == labelled["traffic"]["feedback"]
    share = labelled["traffic"]["feedback"] / REQUESTS
    for version, coverage in decision["coverage"].items():
        assert coverage == pytest.approx(share, abs=0.02), version


def test_dry_run_shows_the_winner_and_changes_nothing(
    repo: Path, labelled: dict[str, Any], tmp_path: Path
) -> None:
    head = run_git(repo, "rev-parse", "HEAD")
    report = tmp_path / "ab.html"
    proc = modelctl(repo, "ab", "analyze", "--stack", STACK, "--dry-run", "--html", str(report))
    assert proc.returncode == 0, proc.stderr
    assert f"WINNER {STRONG}" in proc.stdout
    assert "dry run: nothing committed" in proc.stdout
    assert run_git(repo, "rev-parse", "HEAD") == head
    assert run_git(repo, "status", "--porcelain") == ""
    page = report.read_text(encoding="utf-8")
    assert page.count("<svg") >= 1
    assert f"{STRONG} (treatment)" in page


def test_analyze_concludes_for_the_better_version_by_one_commit(repo: Path, labelled: dict[str, Any]) -> None:
    before = run_git(repo, "rev-parse", "HEAD")
    proc = modelctl(repo, "ab", "analyze", "--stack", STACK, "--json")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["analyses"]
    decision = result["decision"]
    assert (result["outcome"], decision["winner"], decision["loser"]) == ("winner", STRONG, WEAK)
    assert decision["primary"]["lower"] > 0
    for version in (WEAK, STRONG):
        assert decision["coverage"][version] > 0.95
    assert run_git(repo, "rev-parse", "HEAD~1") == before
    files = run_git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(files) == sorted([f"Pulumi.{STACK}.yaml", result["snapshot"]])
    snapshot = json.loads((repo / result["snapshot"]).read_text(encoding="utf-8"))
    assert (snapshot["control"], snapshot["treatment"]) == (WEAK, STRONG)
    release = yamlio.load(repo / f"Pulumi.{STACK}.yaml")["config"]["modelctl:releases"][MODEL]
    assert release["traffic"] == {WEAK: 0, STRONG: 100}
    assert release["rollback_to"] == WEAK
    message = run_git(repo, "log", "-1", "--format=%B")
    assert message.startswith(f"ab analyze winner: {MODEL} {STRONG} to 100% on {STACK}")
    assert f"Analysis-Snapshot: {result['snapshot']}" in message
    # Concluded: nothing left to analyze.
    again = modelctl(repo, "ab", "analyze", "--stack", STACK)
    assert again.returncode == 0, again.stderr
    assert "no A/B experiment to analyze" in again.stdout
