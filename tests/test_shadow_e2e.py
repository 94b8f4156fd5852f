"""The shadow report end to end on the local stack: a version trained on a deliberately weaker
configuration mirrors 50% of the traffic of the registered stable version, with sticky users;
both servers write the prediction log (the stack file's `prediction_log`); `modelctl shadow report` shows how often they disagree,
and the canary that takes the shadow out cites the report in its commit.

Real git, dvc, model servers, Envoy and Prometheus; every wait is bounded, and the stack is
stopped by pid (`modelctl down`) at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scipy.stats import binom

from modelctl.core import contract, yamlio
from modelctl.core.state import load_model
from onebox.traffic import json_rows
from tests import pipeline_repo
from tests.factories import run_git, stack_doc
from tests.test_local_stack import modelctl

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local-stack")]

MODEL = pipeline_repo.MODEL
STABLE, WEAK = "v1.1.0", "v1.2.0"
PERCENT = 50
REQUESTS, USERS = 600, 20
CONFIDENCE = 0.999


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = pipeline_repo.copy(
        pipeline_repo.template(tmp_path_factory), tmp_path_factory.mktemp("shadow") / "repo"
    )
    # The weaker configuration: one boosting iteration at a tenth of the learning rate.
    pipeline_repo.set_train_param(root, "max_iter", 1)
    pipeline_repo.set_train_param(root, "learning_rate", 0.01)
    pipeline_repo.repro_and_commit(root, "train fraud-detection: one slow iteration")
    proc = modelctl(root, "register", MODEL, "--json")
    assert proc.returncode == 0, proc.stderr
    assert WEAK in load_model(root, MODEL).versions
    pipeline_repo.push_all(root)
    doc = stack_doc({STABLE: 100}, namespace="models-dev")
    doc["config"]["modelctl:releases"][MODEL].update(
        {
            "sticky": {"cookie": "model-version"},
            "shadow": {"version": WEAK, "percent": PERCENT},
            "prediction_log": {"sample": 1},
            "replicas": {"min": 1},  # one pod per version is enough here
        }
    )
    yamlio.dump_file(root / "Pulumi.dev.yaml", doc)
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", f"dev: {WEAK} mirrors {PERCENT}% of {STABLE}'s sticky traffic")
    yield root
    modelctl(root, "down", "--stack", "dev")


@pytest.fixture(scope="module")
def stack(repo: Path) -> dict[str, Any]:
    proc = modelctl(
        repo,
        "up",
        "--stack",
        "dev",
        "--json",
        "--scrape-interval=1s",
        "--evaluation-interval=1s",
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def counted(url: str) -> float:
    """model_predicted_class_total of one server, summed over classes, from its own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    prefix = contract.PREDICTED_CLASS.name + "{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def scraped(stack: dict[str, Any], version: str) -> float:
    promql = f'sum({contract.PREDICTED_CLASS.name}{{model="{MODEL}",version="{version}"}})'
    result = httpx.get(f"{stack['prometheus']}/api/v1/query", params={"query": promql}, timeout=10).json()
    return float(result["data"]["result"][0]["value"][1]) if result["data"]["result"] else -1.0


def population_disagreement(repo: Path, stack: dict[str, Any]) -> float:
    """The share of held-out rows on which the two versions predict different classes, asked of
    each server directly (after the report: these requests are not mirrored traffic)."""
    features = load_model(repo, MODEL).signature.features
    rows = json_rows(np.load(repo / "data" / MODEL / "X_test.npy"), [f.type for f in features])
    versions = stack["models"][MODEL]["versions"]
    answers = [
        httpx.post(f"{versions[v]}/predict", json={"instances": rows}, timeout=30).json()["predictions"]
        for v in (STABLE, WEAK)
    ]
    return float(np.mean([a != b for a, b in zip(*answers, strict=True)]))


def test_the_shadow_report_shows_how_the_weaker_version_disagrees(
    repo: Path, stack: dict[str, Any], tmp_path: Path
) -> None:
    started = time.monotonic()
    traffic = modelctl(
        repo, "traffic", "--stack", "dev", "--requests", str(REQUESTS), "--users", str(USERS), "--json"
    )
    assert traffic.returncode == 0, traffic.stderr
    versions = stack["models"][MODEL]["versions"]
    # Every user has the sticky cookie after its first answer: all but 20 requests take the sticky
    # routes, so the shadow's share shows that those are mirrored too.
    mirrored = counted(versions[WEAK])
    low, high = binom.interval(CONFIDENCE, REQUESTS, PERCENT / 100)
    assert low <= mirrored <= high, mirrored
    assert counted(versions[STABLE]) == REQUESTS
    deadline = time.monotonic() + 30
    while scraped(stack, WEAK) != mirrored or scraped(stack, STABLE) != REQUESTS:
        assert time.monotonic() < deadline, "Prometheus did not scrape the last counts within 30 s"
        time.sleep(0.5)
    time.sleep(1.5)  # the prediction log is written once a second

    report_file, page = tmp_path / "report.json", tmp_path / "report.html"
    proc = modelctl(repo, "shadow", "report", "--stack", "dev", "--json", "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    report_file.write_text(proc.stdout, encoding="utf-8")
    [report] = json.loads(proc.stdout)["reports"]
    assert (report["model"], report["primary"], report["shadow"]) == (MODEL, [STABLE], WEAK)
    # Exact counts over the window (PromQL's increase() had added ~20% here, extrapolating a few
    # seconds of traffic to the window's end).
    assert (report["requests"]["primary"], report["requests"]["shadow"]) == (REQUESTS, mirrored)
    agreement = report["agreement"]
    # Every request was logged (no sampling) by both servers: each mirrored one is a pair.
    assert agreement["pairs"] == mirrored
    assert agreement["primary_only"] == REQUESTS - mirrored
    assert agreement["shadow_only"] == 0
    assert sum(n for row in agreement["confusion"].values() for n in row.values()) == mirrored
    # The mirrored rows are a random sample of the held-out rows: their disagreement is binomial
    # around the disagreement on all of them.
    expected = population_disagreement(repo, stack)
    disagreeing = round(mirrored * (1 - agreement["agreement"]))
    low, high = binom.interval(CONFIDENCE, int(mirrored), expected)
    print(f"disagreement {disagreeing}/{mirrored:g} mirrored, {expected:.3f} on the held-out rows")
    assert expected > 0.05  # the weaker version truly differs
    assert low <= disagreeing <= high
    assert report["score_test"]["p_value"] < 0.001  # its scores are far from the stable version's
    text = modelctl(repo, "shadow", "report", "--stack", "dev")
    assert text.returncode == 0, text.stderr
    print(text.stdout)
    assert f"disagreement {100 * (1 - agreement['agreement']):.1f}%" in text.stdout
    assert page.read_text(encoding="utf-8").count("<svg") == 2

    # Taking the shadow out to a canary cites the report in the commit.
    canary = modelctl(
        repo, "canary", MODEL, WEAK, "--stack", "dev", "--weight", "10", "--evidence", str(report_file)
    )
    assert canary.returncode == 0, canary.stderr
    message = run_git(repo, "log", "-1", "--format=%B")
    stored = next(
        line.split(": ", 1)[1] for line in message.splitlines() if line.startswith("Shadow-Report: ")
    )
    committed = json.loads(run_git(repo, "show", f"HEAD:{stored}"))
    assert committed["agreement"] == agreement
    assert stored in run_git(repo, "show", "--name-only", "--format=", "HEAD").split()
    print(f"shadow end to end: {time.monotonic() - started:.1f} s after up")
