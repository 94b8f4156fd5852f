"""Decisions that read git history give a full clone's answer in shallow clones of any depth (the
analysis CronJob clones with --depth 50: case 14): the history is deepened from the remote as far
as the decision needs, and a clone that cannot be deepened says so instead of blaming the soak."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.analysis_job import cron_job
from modelctl import api
from modelctl.api.analysis import Scope, choose
from modelctl.api.analysis_canary import _canary_run
from modelctl.core import yamlio
from modelctl.core.analysis.snapshot import canary_arms
from modelctl.repo import gitutil
from modelctl.repo.state import read_state
from tests.conftest import Cli
from tests.factories import ANALYSIS_JOB, commit_at, fake_hex, redate_head, run_git, write_repo
from tests.test_canary_analyze import Exposition, exposition, prometheus, scraped

__all__ = ["exposition", "prometheus"]  # the fixtures, used by name

MODEL = "fraud-detection"
UNRELATED = 60  # ordinary commits since staging began serving v1.1.0: more than the job's --depth 50
STEP = "dry run: nothing written: canary: fraud-detection v1.1.0 at 10% on prod (v1.0.0 90%)"


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def unrelated_work(root: Path, count: int = UNRELATED) -> None:
    for i in range(count):
        (root / "NOTES.txt").write_text(f"note {i}\n")
        run_git(root, "add", "NOTES.txt")
        run_git(root, "commit", "-q", "-m", f"unrelated change {i}")


def clone(origin: Path, into: Path, depth: int | None) -> Path:
    """A clone as the analysis job makes it (`git clone --depth N` over a URL), or a full one."""
    shallow = ["--depth", str(depth)] if depth else []
    subprocess.run(["git", "clone", "-q", *shallow, f"file://{origin}", str(into)], check=True)
    return into


@pytest.fixture
def soaked(tmp_path: Path) -> Path:
    """v1.1.0 has served on staging for 3 days (prod requires 24h there), then UNRELATED commits,
    then prod's canary of v1.1.0 began (accepted): the repository the job clones."""
    origin = write_repo(tmp_path / "origin")
    redate_head(origin, ago(days=3))
    unrelated_work(origin)
    api.canary(origin, MODEL, "v1.1.0", stack="prod")
    return origin


@pytest.mark.parametrize("depth", [1, 10, 50, None], ids=["depth 1", "depth 10", "depth 50", "full"])
def test_case_14_a_prod_step_gets_the_full_clones_answer_at_any_depth(
    soaked: Path, tmp_path: Path, cli: Cli, depth: int | None
) -> None:
    repo = clone(soaked, tmp_path / "clone", depth)
    code, out, err = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "prod", "--dry-run")
    assert code == 0, err
    assert out.splitlines()[-1] == STEP


@pytest.mark.parametrize("depth", [5, 50])
def test_a_soak_not_yet_served_is_refused_with_its_real_time_in_a_shallow_clone(
    tmp_path: Path, cli: Cli, depth: int
) -> None:
    """staging began serving v1.1.0 2 hours ago, 60 commits back: every clone says 2h, none 0m."""
    origin = write_repo(tmp_path / "origin")
    redate_head(origin, ago(days=3))
    stack = origin / "Pulumi.staging.yaml"
    stack.write_text(
        stack.read_text().replace("v1.0.0: 90\n", "v1.0.0: 100\n").replace("        v1.1.0: 10\n", "")
    )
    commit_at(origin, ago(days=2), "staging on v1.0.0", stack.name)
    doc = yamlio.load(stack)
    doc["config"]["modelctl:releases"][MODEL]["traffic"] = {"v1.0.0": 90, "v1.1.0": 10}
    yamlio.dump_file(stack, doc)
    commit_at(origin, ago(hours=2), "staging canary", stack.name)
    unrelated_work(origin)
    answers = []
    for name, at in (("full", None), ("shallow", depth)):
        code, _, err = cli(clone(origin, tmp_path / name, at), "canary", MODEL, "v1.1.0", "--stack", "prod")
        assert code == 1
        [error] = [line for line in err.splitlines() if line.startswith("error: ")]
        answers.append(error)
    assert answers[0] == answers[1]
    assert "v1.1.0 of fraud-detection has served on staging for only 2h" in answers[0]


def test_a_shallow_clone_that_cannot_be_deepened_names_the_clone_not_the_soak(
    soaked: Path, tmp_path: Path, cli: Cli
) -> None:
    repo = clone(soaked, tmp_path / "clone", 5)
    run_git(repo, "remote", "remove", "origin")
    head = run_git(repo, "rev-parse", "HEAD")
    code, _, err = cli(repo, "canary", MODEL, "v1.1.0", "--stack", "prod")
    assert code == 1
    [error] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "is a shallow clone (git clone --depth) without the history this needs" in error
    assert "git fetch --unshallow" in error
    assert "soak" not in error
    assert "served on staging" not in error
    assert run_git(repo, "rev-parse", "HEAD") == head


def staging_scope(repo: Path) -> Scope:
    return choose(
        repo,
        "staging",
        MODEL,
        canary_arms,
        _canary_run,
        problem="has no canary",
        fix="start one",
        url="http://127.0.0.1:9",  # asked for its lookback delta only, which falls back to 5m
        now=datetime.now(UTC),
    )


@pytest.mark.parametrize("depth", [2, 20])
def test_a_canary_window_and_start_read_in_a_shallow_clone_are_the_full_clones(
    tmp_path: Path, depth: int
) -> None:
    """The canary began 41 commits back and stepped 30 back, after 100 older commits: the
    analysis job's clone finds both (deepening past the change before the canary, not to the
    first commit)."""
    origin = write_repo(tmp_path / "origin")
    redate_head(origin, ago(days=3))
    unrelated_work(origin, 100)
    stack = origin / "Pulumi.staging.yaml"
    stack.write_text(
        stack.read_text().replace("v1.0.0: 90\n", "v1.0.0: 100\n").replace("        v1.1.0: 10\n", "")
    )
    commit_at(origin, ago(hours=5), "staging on v1.0.0", stack.name)
    unrelated_work(origin, 10)
    api.canary(origin, MODEL, "v1.1.0", stack="staging")
    unrelated_work(origin, 10)
    api.canary(origin, MODEL, "v1.1.0", stack="staging")
    unrelated_work(origin, 30)
    full = staging_scope(clone(origin, tmp_path / "full", None))
    shallow_repo = clone(origin, tmp_path / "shallow", depth)
    shallow = staging_scope(shallow_repo)
    assert shallow.changes(MODEL)[0].commit == full.changes(MODEL)[0].commit
    assert shallow.changes(MODEL)[0].subject.startswith("canary: fraud-detection v1.1.0 at 10%")
    assert shallow.began(MODEL) == full.began(MODEL)
    # Deepened to the change before the canary began, not to the first commit.
    assert gitutil.shallow_commits(shallow_repo)


def run_job(
    soaked: Path, tmp_path: Path, prometheus: str, exposition: Exposition, canary_errors: float
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The CronJob's script and settings as rendered for prod (`git clone --depth 50`, then
    `canary analyze`, then a push) against a bare repository holding `soaked`, after 100,000
    requests at 5% to the canary (`canary_errors` of them failed, 0.1% of the baseline's)."""
    stack = soaked / "Pulumi.prod.yaml"
    doc = yamlio.load(stack)
    doc["config"]["modelctl:releases"][MODEL]["analysis"] = {"interval": "1s"}
    environment = doc["config"]["modelctl:environment"]
    # Production pins every image by digest, the job's too.
    environment["analysis"] = {
        **ANALYSIS_JOB,
        "image": f"{ANALYSIS_JOB['image']}@sha256:{fake_hex('job', 64)}",
    }
    environment.setdefault("monitoring", {})["prometheus_url"] = prometheus
    yamlio.dump_file(stack, doc)
    run_git(soaked, "commit", "-q", "-am", "prod: steps a second apart, analyzed in the cluster")
    bare = tmp_path / "models.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(soaked), str(bare)], check=True)
    exposition.serve("v1.0.0", 95_000, error_rate=0.001, seed=1)
    exposition.serve("v1.1.0", 5_000, error_rate=canary_errors, slower=0.9, seed=2)
    scraped(prometheus, 100_000)
    prod = read_state(soaked).stack("prod")
    assert prod.config.environment.analysis is not None
    job = cron_job(prod, prod.config.environment.analysis)
    [container] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    rendered = {e["name"]: e["value"] for e in container["env"]}
    env = {
        **os.environ,
        **rendered,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "REPOSITORY": f"file://{bare}",
        "BRANCH": "main",
        "PROMETHEUS_URL": prometheus,
        "KEY_DIR": str(workspace),
        "HOME": str(workspace),
    }
    script = container["command"][-1]
    assert "--depth 50 " in script
    done = subprocess.run(
        ["/bin/sh", "-c", script.replace("/workspace", str(workspace))],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, bare


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (make tools)")
def test_case_14_the_analysis_jobs_own_script_judges_a_prod_step_from_its_depth_50_clone(
    soaked: Path, tmp_path: Path, exposition: Exposition, prometheus: str
) -> None:
    """A healthy prod canary whose version soaked on staging 60 commits back: the job's clone
    judges the step as a full clone does (it was refused with 'served on staging for only 0m'),
    and leaves it for review (production steps go through pull requests): nothing is pushed."""
    done, bare = run_job(soaked, tmp_path, prometheus, exposition, canary_errors=0.001)
    assert "STEP fraud-detection on prod: nothing committed" in done.stdout
    assert "left for review: --rollbacks-only commits rollbacks only" in done.stdout
    assert run_git(bare, "log", "-1", "--format=%s", "main").startswith("prod: steps a second apart")


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (make tools)")
def test_the_analysis_job_pushes_a_prod_rollback_at_once(
    soaked: Path, tmp_path: Path, exposition: Exposition, prometheus: str
) -> None:
    _, bare = run_job(soaked, tmp_path, prometheus, exposition, canary_errors=0.2)
    subject = run_git(bare, "log", "-1", "--format=%s", "main").strip()
    assert subject == "canary analyze rollback: fraud-detection to v1.0.0 100% on prod, holding v1.1.0"
