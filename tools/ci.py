"""The GitHub workflows' own steps, as commands a test runs against a local bare repository.

    python3 tools/ci.py configured WHY NAME...     # is each setting there, or a notice why the job skips
    .venv/bin/python tools/ci.py canary-analysis  # canary.yaml: judge every canary, publish each decision
    .venv/bin/python tools/ci.py deploy-stacks    # deploy.yaml: the stacks to `pulumi up`, and where
    .venv/bin/python tools/ci.py doctor           # pr.yaml: `modelctl doctor` where the DVC remote is reachable

They read what GitHub Actions sets: GITHUB_REPOSITORY, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, and
the settings each workflow passes in (GH_TOKEN, PROMETHEUS_URL). The repository on GitHub is
`https://x-access-token:$GH_TOKEN@github.com/$GITHUB_REPOSITORY.git`; tests point that address
at a bare repository with git's `url.<bare>.insteadOf`, and put a `gh` that records its calls
first on PATH.

Publishing a decision (canary-analysis), per stack and model:
- a rollback, and any decision on a stack that is not production, is one commit pushed to main.
  Pushed with a GitHub App's token, the push starts deploy.yaml (a push made with the default
  GITHUB_TOKEN starts no workflow); a production rollback then deploys without waiting for a
  reviewer, since it only restores (deploy-stacks, `modelctl plan`'s `restores`), and closes the
  pull request of the step it supersedes;
- a production step or promotion is a pull request from the branch
  `canary-analysis/<stack>/<model>`, one per model: a run that finds the branch already proposing
  the same decision (the same commit subject: the same step from the same traffic) leaves it and
  its pull request as they are; a different decision replaces the branch's commit and updates
  the pull request, or opens one.
A push that finds main moved (another writer) starts that model's analysis again from the new
main, up to three times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MAIN = "main"
BRANCH = "canary-analysis/{stack}/{model}"
ATTEMPTS = 3
# Code whose change means a stack is updated even when its rendered state is not.
CODE = ("infra", "policies", "serving", "Pulumi.yaml")
PRODUCTION = "production"
# The environment of a production deploy that only rolls back: no required reviewers.
PRODUCTION_ROLLBACK = "production-rollback"
BIN = Path(sys.executable).parent


class Failed(Exception):
    """A step failed; its message is the one line the job log shows."""


def run(*args: str, ok: Sequence[int] = (0,), cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; an exit code outside `ok` fails the step with its stderr."""
    done = subprocess.run(list(args), cwd=cwd, text=True, capture_output=True)
    if done.returncode not in ok:
        raise Failed(f"{' '.join(args[:3])}... exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done


def git(*args: str, ok: Sequence[int] = (0,)) -> str:
    return run("git", *args, ok=ok).stdout.strip()


def modelctl(*args: str, ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    return run(str(BIN / "modelctl"), *args, ok=ok)


def say(line: str) -> None:
    """One line in the job's log and its summary."""
    print(line, flush=True)
    if summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(summary, "a", encoding="utf-8") as out:
            out.write(f"- {line}\n")


def output(name: str, value: str) -> None:
    """A step output (`steps.<id>.outputs.<name>`); printed when not under GitHub Actions."""
    if path := os.environ.get("GITHUB_OUTPUT"):
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{name}={value}\n")
    else:
        print(f"{name}={value}")


# ---------------------------------------------------------------- configured


def configured(names: Sequence[str], why: str) -> int:
    """`ready=true` when every named environment variable is set; else `ready=false` and a
    notice naming what is missing, so the job's other steps skip (a fresh fork has no secrets)."""
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        print(f"::notice::skipped: {', '.join(missing)} not set; {why}")
    output("ready", "false" if missing else "true")
    return 0


# ---------------------------------------------------------------- canary-analysis


def remote() -> str:
    token, repository = os.environ["GH_TOKEN"], os.environ["GITHUB_REPOSITORY"]
    return f"https://x-access-token:{token}@github.com/{repository}.git"


def sync(url: str) -> str:
    """The local main at the remote's; its commit."""
    git("fetch", "--quiet", url, MAIN)
    git("switch", "--quiet", "--force-create", MAIN, "FETCH_HEAD")
    return git("rev-parse", "HEAD")


def remote_branch(url: str, branch: str) -> str:
    """The commit the remote's `branch` points at, or "" when it has none."""
    line = git("ls-remote", url, f"refs/heads/{branch}")
    return line.split()[0] if line else ""


def analyze(prometheus: str, stack: str, *only: str, dry_run: bool = False) -> list[dict[str, Any]]:
    """`canary analyze --json`'s analyses; exit 2 (a rollback) and 3 (a hold) are decisions."""
    flags = ["--model", *only] if only else []
    done = modelctl(
        "canary", "analyze", "--stack", stack, "--prometheus", prometheus, *flags,
        *(["--dry-run"] if dry_run else []), "--json", ok=(0, 2, 3),
    )  # fmt: skip
    analyses: list[dict[str, Any]] = json.loads(done.stdout)["analyses"]
    return analyses


def canary_analysis() -> int:
    prometheus, url = os.environ["PROMETHEUS_URL"], remote()
    git("config", "user.name", "modelctl canary analysis")
    git("config", "user.email", "canary-analysis@users.noreply.github.com")
    sync(url)
    from modelctl.core.state import load_state

    failed = []
    for name, stack in sorted(load_state(Path.cwd()).stacks.items()):
        sync(url)
        for decided in analyze(prometheus, name, dry_run=True):
            if decided["outcome"] == "hold":
                say(
                    f"{decided['model']} on {name}: hold, nothing to commit: {decided['decision']['reasons'][0]}"
                )
                continue
            try:
                publish(url, prometheus, name, decided["model"], stack.config.environment.production)
            except Failed as failure:  # one model's error leaves the others' decisions to publish
                failed.append(failure)
                print(f"::error::{failure}", file=sys.stderr)
    return 1 if failed else 0


def publish(url: str, prometheus: str, stack: str, model: str, production: bool) -> None:
    """Analyze `model` again on the newest main and publish what it decides."""
    for _ in range(ATTEMPTS):
        main = sync(url)
        analyses = analyze(prometheus, stack, model)
        if git("rev-parse", "HEAD") == main:
            outcome = analyses[0]["outcome"] if analyses else "no canary any more"
            say(f"{model} on {stack}: {outcome}, nothing to commit")
            return
        if production and analyses[0]["outcome"] != "rollback":
            propose(url, stack, model)
            return
        if push(url, "HEAD", f"refs/heads/{MAIN}", expect=main):
            say(f"{model} on {stack}: pushed to {MAIN}: {subject('HEAD')}")
            if production:
                close_proposal(url, stack, model)
            return
        say(f"{model} on {stack}: {MAIN} moved while analyzing; analyzing again")
    raise Failed(f"{model} on {stack}: {MAIN} kept moving; the next run analyzes it again")


def push(url: str, source: str, ref: str, expect: str) -> bool:
    """Push `source` to `ref` ("": delete it) if the remote's `ref` is still at `expect` ("":
    absent); False when it moved, so the push was rejected."""
    done = run(
        "git", "push", "--porcelain", f"--force-with-lease={ref}:{expect}", url, f"{source}:{ref}", ok=(0, 1)
    )
    if done.returncode and "[rejected]" not in done.stdout:
        raise Failed(f"git push to {ref} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return done.returncode == 0


def subject(commit: str) -> str:
    return git("log", "-1", "--format=%s", commit)


def propose(url: str, stack: str, model: str) -> None:
    """A production step or promotion as the pull request of branch canary-analysis/<stack>/<model>."""
    branch = BRANCH.format(stack=stack, model=model)
    title = subject("HEAD")
    proposed = remote_branch(url, branch)
    if proposed:
        git("fetch", "--quiet", url, f"refs/heads/{branch}")
        if subject("FETCH_HEAD") == title:
            say(f"{model} on {stack}: {branch} already proposes this step, left as it is: {title}")
            return
    if not push(url, "HEAD", f"refs/heads/{branch}", expect=proposed):
        raise Failed(f"{model} on {stack}: {branch} moved while it was being replaced; the next run sees it")
    evidence = modelctl("judge", "--replay", "HEAD", ok=(0, 2, 3)).stdout.strip()
    body = f"{git('log', '-1', '--format=%b', 'HEAD')}\n\n```\n{evidence}\n```\n"
    number = open_pull_request(branch)
    if number:
        run("gh", "pr", "edit", number, "--title", title, "--body", body)
        say(f"{model} on {stack}: pull request #{number} updated: {title}")
    else:
        run("gh", "pr", "create", "--base", MAIN, "--head", branch, "--title", title, "--body", body)
        say(f"{model} on {stack}: pull request opened from {branch}: {title}")


def open_pull_request(branch: str) -> str:
    """The number of the open pull request from `branch`, or ""."""
    found = run("gh", "pr", "list", "--head", branch, "--base", MAIN, "--state", "open", "--json", "number")
    numbers = [str(pr["number"]) for pr in json.loads(found.stdout or "[]")]
    return numbers[0] if numbers else ""


def close_proposal(url: str, stack: str, model: str) -> None:
    """A rollback supersedes the step its branch proposes: the pull request is closed, the branch deleted."""
    branch = BRANCH.format(stack=stack, model=model)
    proposed = remote_branch(url, branch)
    if not proposed:
        return
    if number := open_pull_request(branch):
        comment = f"Superseded by {git('rev-parse', '--short', 'HEAD')}: {subject('HEAD')}"
        run("gh", "pr", "close", number, "--comment", comment)
    push(url, "", f"refs/heads/{branch}", expect=proposed)
    say(f"{model} on {stack}: {branch} deleted, its step superseded by the rollback")


# ---------------------------------------------------------------- deploy-stacks


def deploy_stacks() -> int:
    """`stacks=[{"stack", "production", "environment"}]`, non-production first: each stack whose
    desired state or code differs from its last deployment (the tag deployed/<stack>, moved after
    each successful update, so a deploy that never ran is caught up by the next). A production
    change that only rolls back deploys in `production-rollback`, without a reviewer."""
    selected = []
    for file in sorted(Path.cwd().glob("Pulumi.*.yaml")):
        stack = file.name.removeprefix("Pulumi.").removesuffix(".yaml")
        base = f"refs/tags/deployed/{stack}"
        deployed = bool(git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}", ok=(0, 1)))
        plan = json.loads(
            modelctl(
                "plan", "--base", base if deployed else "HEAD", "--stack", stack, "--json", ok=(0, 2)
            ).stdout
        )
        code = (
            not deployed
            or run("git", "diff", "--quiet", base, "HEAD", "--", *CODE, ok=(0, 1)).returncode == 1
        )
        planned = plan["stacks"][stack]
        if not (planned["changed"] or code):
            continue
        production = bool(planned["production"])
        environment = (
            (PRODUCTION_ROLLBACK if planned["restores"] and not code else PRODUCTION) if production else stack
        )
        selected.append({"stack": stack, "production": production, "environment": environment})
        say(f"{stack}: deploy in environment {environment}")
    output(
        "stacks",
        json.dumps(sorted(selected, key=lambda s: (s["production"], s["stack"])), separators=(",", ":")),
    )
    return 0


# ---------------------------------------------------------------- doctor


def doctor() -> int:
    """`modelctl doctor` against the DVC remote, or one line saying why not: a local folder (the
    committed default, `make demo`'s) is not on this runner."""
    dvc = str(BIN / "dvc")
    default = run(dvc, "remote", "default", ok=(0, 1))
    name = default.stdout.strip() if default.returncode == 0 else ""
    url = run(dvc, "config", f"remote.{name}.url").stdout.strip() if name else ""
    if "://" not in url or url.startswith("file://"):
        where = (
            f"the DVC remote {name} is a local folder ({url})" if name else "there is no default DVC remote"
        )
        print(
            f"::notice::skipped modelctl doctor: {where}, not on this runner; it runs where the remote is "
            "reachable (make demo), or set a cloud remote (README: DVC remote)"
        )
        return 0
    return subprocess.run([str(BIN / "modelctl"), "doctor"]).returncode


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "configured": lambda argv: configured(argv[1:], argv[0]),
    "canary-analysis": lambda argv: canary_analysis(),
    "deploy-stacks": lambda argv: deploy_stacks(),
    "doctor": lambda argv: doctor(),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: tools/ci.py {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except Failed as failed:
        print(f"::error::{failed}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
