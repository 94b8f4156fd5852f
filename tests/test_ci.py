"""The workflows' own steps (tools/ci.py), run as committed against a local bare repository standing
in for GitHub: git's `insteadOf` (set for each run through GIT_CONFIG_* variables) sends the
workflow's github.com address there, a `gh` first on PATH records its calls and answers
`gh pr list` from the pull requests it was asked to open, and a real Prometheus holds the canary's
metrics. What GitHub itself does (a push by the App's token starts deploy.yaml, the concurrency
group runs one analysis at a time) is documented in the README and checked in the workflow files
(tests/test_workflows.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelctl import api
from modelctl.core import yamlio
from tests import test_canary_analyze as analyzed
from tests.factories import PROD_IMAGE, model_doc, run_git, stack_doc, write_repo
from tests.test_canary_analyze import MODEL, Exposition, scraped

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "acme/models"
TOKEN = "t0ken"
BRANCH = f"canary-analysis/prod/{MODEL}"
# The same fixtures as the analysis tests: the server's metrics for two versions, and a real
# Prometheus scraping them every second.
exposition = analyzed.exposition
prometheus = analyzed.prometheus

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed (make tools)"
)

GH = """\
#!{python}
# gh for the tests: each call is one JSON line in {log}; `pr create` opens a pull request and
# `pr close` closes it in {prs}, which `pr list --head B --state open` answers from.
import json, sys
from pathlib import Path

args = sys.argv[1:]
with open("{log}", "a") as log:
    log.write(json.dumps(args) + "\\n")
prs = Path("{prs}")
known = json.loads(prs.read_text()) if prs.exists() else []
value = lambda flag: args[args.index(flag) + 1]
if args[:2] == ["pr", "create"]:
    known.append({{"number": len(known) + 1, "head": value("--head"), "state": "open"}})
elif args[:2] == ["pr", "close"]:
    next(pr for pr in known if pr["number"] == int(args[2]))["state"] = "closed"
elif args[:2] == ["pr", "list"]:
    print(json.dumps([{{"number": pr["number"]}} for pr in known if pr["head"] == value("--head") and pr["state"] == "open"]))
prs.write_text(json.dumps(known))
"""


@dataclass
class GitHub:
    """The bare repository, the recorded `gh` calls, and how to run a workflow step against them."""

    bare: Path
    bin: Path
    work: Path

    @property
    def calls(self) -> list[list[str]]:
        log = self.bin / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def called(self, *prefix: str) -> list[list[str]]:
        return [call for call in self.calls if call[: len(prefix)] == list(prefix)]

    def git(self, *args: str) -> str:
        return run_git(self.bare, *args).strip()

    def run_step(self, script: str, run_id: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A workflow step's `run`, in a fresh clone with the project's virtualenv, as a runner would."""
        checkout = self.work / f"run-{run_id}"
        subprocess.run(["git", "clone", "-q", str(self.bare), str(checkout)], check=True)
        (checkout / ".venv").symlink_to(Path(sys.executable).parents[1])
        return subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=checkout, text=True, capture_output=True, timeout=300,
            env={
                **os.environ,
                "PATH": f"{self.bin}:{os.environ['PATH']}",
                "GH_TOKEN": TOKEN,
                "GITHUB_REPOSITORY": REPOSITORY,
                "GITHUB_RUN_ID": run_id,
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": f"url.{self.bare}.insteadOf",
                "GIT_CONFIG_VALUE_0": f"https://x-access-token:{TOKEN}@github.com/{REPOSITORY}.git",
                **env,
            },
        )  # fmt: skip


def workflow_step(workflow: str, job: str, name: str) -> str:
    """The `run` of a committed workflow's step."""
    steps = yamlio.load(ROOT / ".github" / "workflows" / workflow)["jobs"][job]["steps"]
    return str(next(step for step in steps if step.get("name") == name)["run"])


ANALYZE = workflow_step("canary.yaml", "analyze", "Analyze every canary and publish the decisions")


def publish(repo: Path, tmp_path: Path) -> GitHub:
    """The repository, with the committed tools/ci.py, pushed to a bare repository as main."""
    (repo / "tools").mkdir(exist_ok=True)
    shutil.copy(ROOT / "tools" / "ci.py", repo / "tools" / "ci.py")
    run_git(repo, "add", "tools/ci.py")
    run_git(repo, "commit", "-q", "-m", "the workflows' steps")
    run_git(repo, "branch", "-q", "-M", "main")
    bare = tmp_path / "github.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text(GH.format(python=sys.executable, log=bin_dir / "calls.jsonl", prs=bin_dir / "prs.json"))
    gh.chmod(0o755)
    return GitHub(bare, bin_dir, tmp_path)


@pytest.fixture
def canaries(tmp_path: Path) -> Path:
    """staging (not production) and prod (production) each with a canary of v1.1.0 at 5%, committed;
    a step may follow one second after the one before (analysis.interval: 1s)."""
    stacks = {
        "staging": stack_doc({"v1.0.0": 100}),
        "prod": stack_doc({"v1.0.0": 100}, production=True, namespace="models-prod", image=PROD_IMAGE),
    }
    for doc in stacks.values():
        doc["config"]["modelctl:releases"][MODEL]["analysis"] = {"interval": "1s"}
    repo = write_repo(tmp_path / "repo", {MODEL: model_doc()}, stacks)
    for stack in ("staging", "prod"):
        api.canary(repo, MODEL, "v1.1.0", stack=stack)
    return repo


def healthy(exposition: Exposition, prometheus: str, total: int = 0) -> int:
    """Both versions serve alike (the canary's 5%) on both stacks; the requests fed so far."""
    exposition.namespaces = ("models-test", "models-prod")
    exposition.serve("v1.1.0", 5000, error_rate=0.001, seed=total + 1)
    exposition.serve("v1.0.0", 95000, error_rate=0.001, seed=total + 2)
    scraped(prometheus, total + 100_000)
    return total + 100_000


def test_one_pull_request_per_production_step_and_a_rollback_that_supersedes_it(
    canaries: Path, tmp_path: Path, prometheus: str, exposition: Exposition
) -> None:
    """Four scheduled runs. 1: prod's step is proposed in a pull request, staging's goes to main.
    2 (case 18): the branch already proposes that step; it and its pull request are left as they
    are. 3: prod's steps were changed on main meanwhile; the new step replaces the branch's commit
    and the same pull request is edited. 4: the canary fails; its rollback goes to main at once
    and closes the pull request of the step it supersedes."""
    github = publish(canaries, tmp_path)
    total = healthy(exposition, prometheus)

    def run(run_id: str) -> str:
        done = github.run_step(ANALYZE, run_id, PROMETHEUS_URL=prometheus)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert f"{MODEL} on prod: pull request opened from {BRANCH}" in run("1001")
    proposed = github.git("rev-parse", BRANCH)
    assert f"{BRANCH} already proposes this step, left as it is" in run("1002")
    [create] = github.called("pr", "create")
    assert create[:7] == ["pr", "create", "--base", "main", "--head", BRANCH, "--title"]
    assert create[7] == f"canary analyze step: {MODEL} v1.1.0 at 10% on prod (v1.0.0 90%)"
    assert "matches" in create[9]  # the body: the decision replayed from its committed snapshot
    assert github.called("pr", "edit") == []
    assert github.git("rev-parse", BRANCH) == proposed
    assert github.git("branch", "--list", "canary-analysis/*").split() == [BRANCH]
    # The proposal is one analysis commit on main as it was; main holds staging's step.
    assert github.git("rev-parse", f"{BRANCH}~1") in github.git("rev-list", "main").split()
    assert github.git("log", "--format=%s", "main").startswith(
        f"canary analyze step: {MODEL} v1.1.0 at 10% on staging"
    )

    edit = tmp_path / "edit"
    subprocess.run(["git", "clone", "-q", str(github.bare), str(edit)], check=True)
    doc = yamlio.load(edit / "Pulumi.prod.yaml")
    doc["config"]["modelctl:releases"][MODEL]["analysis"] = {"steps": [20, 50], "interval": "1s"}
    yamlio.dump_file(edit / "Pulumi.prod.yaml", doc)
    run_git(edit, "commit", "-q", "-am", "prod: steps of 20 and 50%")
    run_git(edit, "push", "-q", "origin", "HEAD:main")
    total = healthy(exposition, prometheus, total)
    assert f"{MODEL} on prod: pull request #1 updated" in run("1003")
    assert len(github.called("pr", "create")) == 1
    [edited] = github.called("pr", "edit")
    title = f"canary analyze step: {MODEL} v1.1.0 at 20% on prod (v1.0.0 80%)"
    assert edited[:5] == ["pr", "edit", "1", "--title", title]
    assert github.git("log", "-1", "--format=%s", BRANCH) == title
    assert github.git("log", "-1", "--format=%s", f"{BRANCH}~1") == "prod: steps of 20 and 50%"

    # The canary starts failing one request in five before anyone merged its step.
    exposition.serve("v1.1.0", 5000, error_rate=0.2, seed=7)
    exposition.serve("v1.0.0", 95000, error_rate=0.001, seed=8)
    scraped(prometheus, total + 100_000)
    assert f"{BRANCH} deleted, its step superseded by the rollback" in run("1004")
    # Both stacks roll back on main (prod first); no step of prod ever reached main.
    subjects = github.git("log", "-2", "--format=%s", "main").splitlines()
    assert [subject.split(":")[0] for subject in subjects] == ["canary analyze rollback"] * 2
    assert subjects[1].startswith(f"canary analyze rollback: {MODEL} to v1.0.0 100% on prod")
    [close] = github.called("pr", "close")
    assert close[2] == "1"
    assert close[4].startswith("Superseded by ")
    assert github.git("branch", "--list", "canary-analysis/*") == ""


# ---------------------------------------------------------------- without Prometheus


def load_ci() -> Any:
    """tools/ci.py as a module (it is a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ci", ROOT / "tools" / "ci.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_push_never_overwrites_what_another_writer_pushed(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers (this run and the in-cluster job, say): the second push is refused, not forced."""
    ci = load_ci()
    bare = tmp_path / "github.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    main = run_git(bare, "rev-parse", "HEAD").strip()
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(bare), str(other)], check=True)
    run_git(other, "commit", "-q", "--allow-empty", "-m", "another writer")
    run_git(other, "push", "-q", "origin", "HEAD")
    run_git(repo, "commit", "-q", "--allow-empty", "-m", "this run")
    monkeypatch.chdir(repo)
    branch = run_git(repo, "branch", "--show-current").strip()
    assert ci.push(str(bare), "HEAD", f"refs/heads/{branch}", expect=main) is False
    assert run_git(bare, "log", "-1", "--format=%s", branch).strip() == "another writer"
    assert ci.push(str(bare), "HEAD", "refs/heads/new", expect="") is True
    run_git(repo, "commit", "-q", "--allow-empty", "-m", "this run again")
    assert ci.push(str(bare), "HEAD", "refs/heads/new", expect="") is False  # it exists now
    assert run_git(bare, "log", "-1", "--format=%s", "new").strip() == "this run"


def deploy_stacks(repo: Path, tmp_path: Path) -> dict[str, str]:
    """deploy.yaml's stacks step, run as committed in `repo`: stack -> environment."""
    output = tmp_path / "github-output"
    output.unlink(missing_ok=True)
    step = workflow_step(
        "deploy.yaml", "stacks", "Stacks whose desired state differs from their last deployment"
    )
    (repo / ".venv").unlink(missing_ok=True)
    (repo / ".venv").symlink_to(Path(sys.executable).parents[1])
    (repo / "tools").mkdir(exist_ok=True)
    shutil.copy(ROOT / "tools" / "ci.py", repo / "tools" / "ci.py")
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step], cwd=repo, text=True, capture_output=True,
        env={**os.environ, "GITHUB_OUTPUT": str(output)}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [line] = output.read_text().splitlines()
    stacks = json.loads(line.removeprefix("stacks="))
    assert [s["production"] for s in stacks] == sorted(
        s["production"] for s in stacks
    )  # non-production first
    return {s["stack"]: s["environment"] for s in stacks}


def test_deploys_go_to_the_stacks_that_changed_and_a_rollback_skips_the_reviewers(
    repo: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    def deployed() -> None:
        for stack in ("dev", "staging", "prod"):
            run_git(repo, "tag", "-f", f"deployed/{stack}", "HEAD")

    assert deploy_stacks(repo, tmp_path) == {"dev": "dev", "staging": "staging", "prod": "production"}
    stack = repo / "Pulumi.prod.yaml"
    doc = yamlio.load(stack)
    del doc["config"]["modelctl:environment"]["requires"]
    yamlio.dump_file(stack, doc)
    run_git(repo, "commit", "-q", "-am", "prod without a soak")
    deployed()
    assert deploy_stacks(repo, tmp_path) == {}
    cli(repo, "canary", MODEL, "v1.1.0", "--stack", "prod")
    assert deploy_stacks(repo, tmp_path) == {"prod": "production"}
    deployed()
    cli(repo, "rollback", MODEL, "--stack", "prod", "--reason", "INC-9")
    assert deploy_stacks(repo, tmp_path) == {"prod": "production-rollback"}
    # The same rollback with a change to the code that renders every stack waits for reviewers.
    (repo / "infra").mkdir()
    (repo / "infra" / "notes.txt").write_text("a change to infra\n")
    run_git(repo, "add", "infra/notes.txt")
    run_git(repo, "commit", "-q", "-m", "infra change")
    assert deploy_stacks(repo, tmp_path) == {"dev": "dev", "staging": "staging", "prod": "production"}


def test_a_job_without_its_settings_skips_with_one_line(tmp_path: Path) -> None:
    output = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in {"PROMETHEUS_URL", "CANARY_APP_PRIVATE_KEY"}}
    step = workflow_step("canary.yaml", "analyze", "Settings")
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step], cwd=ROOT, text=True, capture_output=True,
        env={**env, "GITHUB_OUTPUT": str(output), "CANARY_APP_CLIENT_ID": "Iv1.abc"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "::notice::skipped: CANARY_APP_PRIVATE_KEY, PROMETHEUS_URL not set; no canary analysis from CI "
        "(README: GitHub setup)"
    ]
    assert output.read_text() == "ready=false\n"
    output.unlink()
    ready = {"CANARY_APP_CLIENT_ID": "Iv1.abc", "CANARY_APP_PRIVATE_KEY": "k", "PROMETHEUS_URL": "http://p"}
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step], cwd=ROOT, text=True, capture_output=True,
        env={**env, **ready, "GITHUB_OUTPUT": str(output)},
    )  # fmt: skip
    assert (done.stdout, output.read_text()) == ("", "ready=true\n")


def test_doctor_runs_where_the_dvc_remote_is_reachable_and_says_why_not_elsewhere(tmp_path: Path) -> None:
    """The committed remote is a local folder beside the repository (make demo's): not on a runner."""
    step = next(
        s["run"]
        for s in yamlio.load(ROOT / ".github" / "workflows" / "pr.yaml")["jobs"]["doctor"]["steps"]
        if "tools/ci.py doctor" in s.get("run", "")
    )
    clone = tmp_path / "clone"
    (clone / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "ci.py", clone / "tools" / "ci.py")
    shutil.copytree(
        ROOT / ".dvc", clone / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local")
    )
    (clone / ".venv").symlink_to(Path(sys.executable).parents[1])
    subprocess.run(["git", "init", "-q", str(clone)], check=True)

    def doctor() -> str:
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step], cwd=clone, text=True, capture_output=True
        )
        assert done.returncode == 0, done.stderr
        [line] = done.stdout.splitlines()
        return str(line)

    line = doctor()
    assert line.startswith("::notice::skipped modelctl doctor: the DVC remote local is a local folder (")
    assert line.endswith(
        "not on this runner; it runs where the remote is reachable (make demo), or set a cloud remote (README: DVC remote)"
    )
    subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "remote", "remove", "local"], cwd=clone, check=True
    )
    assert doctor().startswith(
        "::notice::skipped modelctl doctor: there is no default DVC remote, not on this"
    )
