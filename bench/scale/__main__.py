"""`python -m bench.scale`: modelctl's commands on this repository and on scratch clones grown to
N models and M commits, in one run; writes the table to bench/scale/README.md.

Each command runs as a user runs it (the `modelctl` of this environment, a new process, in the
repository), once to warm the disk cache, then `--runs` times; the table gives the median wall
time and its ratio to the same command on the project's own repository (a clone of it, grown by
nothing). A release command starts each run from the same commit (`git reset --hard`, not timed).
The exit code is 1 when any command exits otherwise than expected (the figures would not be
comparable), else 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.scale.grow import grow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELCTL = str(Path(sys.executable).with_name("modelctl"))
DEFAULT_SIZES = "30x2000,300x2000,1000x10000"


@dataclass(frozen=True)
class Command:
    label: str
    argv: tuple[str, ...]
    # "model": costs what one model's step touches; "repository": reads and renders everything.
    kind: str
    resets: bool = False
    exits: tuple[int, ...] = (0,)


COMMANDS = (
    Command("status", ("status",), "model"),
    Command(
        "canary fraud-detection v1.1.0 --stack staging",
        ("canary", "fraud-detection", "v1.1.0", "--stack", "staging"),
        "model",
        resets=True,
    ),
    Command(
        "promote fraud-detection --stack staging",
        ("promote", "fraud-detection", "--stack", "staging"),
        "model",
        resets=True,
    ),
    Command(
        "rollback fraud-detection --stack staging",
        ("rollback", "fraud-detection", "--stack", "staging"),
        "model",
        resets=True,
    ),
    Command(
        "canary fraud-detection v1.1.0 --stack prod (soak: staging's history)",
        ("canary", "fraud-detection", "v1.1.0", "--stack", "prod"),
        "model",
        resets=True,
    ),
    Command(
        "history fraud-detection --stack staging",
        ("history", "fraud-detection", "--stack", "staging"),
        "model",
    ),
    Command("models show fraud-detection", ("models", "show", "fraud-detection"), "model"),
    Command("check", ("check",), "repository"),
    Command("render --stack prod", ("render", "--stack", "prod"), "repository"),
    Command("plan --base HEAD~1", ("plan", "--base", "HEAD~1"), "repository", exits=(0, 2)),
)
GOALS = {"model": {300: 2.0, 1000: 3.0}, "repository": {300: 10.0}}


@dataclass(frozen=True)
class Repository:
    label: str
    models: int
    commits: int
    path: Path
    head: str


def run_once(repo: Repository, command: Command) -> tuple[float, float]:
    """Wall and CPU seconds (the command and every process it waited for) of one run."""
    if command.resets:
        subprocess.run(["git", "reset", "-q", "--hard", repo.head], cwd=repo.path, check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([MODELCTL, *command.argv], cwd=repo.path, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in command.exits:
        raise SystemExit(
            f"{command.label} on {repo.label} exited {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run(repos: list[Repository], command: Command, runs: int) -> dict[str, list[tuple[float, float]]]:
    """Per repository, (wall, CPU) seconds of `runs` runs after one warm-up; the repositories
    take turns, so a change in the machine's load falls on all of them alike."""
    times: dict[str, list[tuple[float, float]]] = {repo.label: [] for repo in repos}
    for index in range(runs + 1):
        for repo in repos:
            measured = run_once(repo, command)
            if index:
                times[repo.label].append(measured)
    for repo in repos:
        subprocess.run(["git", "reset", "-q", "--hard", repo.head], cwd=repo.path, check=True)
    return times


def prepare(folder: Path, sizes: list[tuple[int, int]]) -> list[Repository]:
    repos = []
    for models, commits in [(0, 0), *sizes]:
        path = folder / f"repo-{models}-{commits}"
        started = time.perf_counter()
        grow(ROOT, path, models, commits)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        )
        counted = len(list((path / "models").glob("*/model.yaml")))
        total = subprocess.run(
            ["git", "rev-list", "--count", "HEAD"], cwd=path, capture_output=True, text=True
        )
        label = "this repository" if not models else f"{counted} models, {commits:,} commits"
        print(
            f"bench/scale: {label}: {counted} models, {total.stdout.strip()} commits, grown in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        repos.append(Repository(label, counted, int(total.stdout), path, head.stdout.strip()))
    return repos


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help=f"MODELSxCOMMITS,... (default {DEFAULT_SIZES})"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each command (after one warm-up)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave the README as it is")
    args = parser.parse_args()
    sizes = [(int(m), int(c)) for m, c in (size.split("x") for size in args.sizes.split(","))]
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        repos = prepare(folder, sizes)
        medians: dict[tuple[str, str], float] = {}
        cpu: dict[tuple[str, str], float] = {}
        for command in COMMANDS:
            for label, times in run(repos, command, args.runs).items():
                medians[command.label, label] = statistics.median(wall for wall, _ in times)
                cpu[command.label, label] = statistics.median(used for _, used in times)
                print(
                    f"bench/scale: {command.label} on {label}: median {medians[command.label, label]:.2f} s "
                    f"(CPU {cpu[command.label, label]:.2f} s)",
                    flush=True,
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = report(repos, medians, cpu, args.runs, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        readme = (HERE / "README.md").read_text(encoding="utf-8")
        head = readme.split(RESULTS_MARK)[0]
        (HERE / "README.md").write_text(head + RESULTS_MARK + "\n\n" + text, encoding="utf-8")


RESULTS_MARK = "## Results"


def report(
    repos: list[Repository],
    medians: dict[tuple[str, str], float],
    cpu: dict[tuple[str, str], float],
    runs: int,
    seconds: float,
) -> str:
    own, grown = repos[0], repos[1:]
    header = ["command", own.label, *(r.label for r in grown)]
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"median of {runs} runs after a warm-up (the repositories taking turns), the whole run "
        f"{seconds / 60:.0f} min. Ratios are to the same command on this repository ({own.models} models, "
        f"{own.commits} commits) in the same run; each cell is wall time, then CPU time (the command and "
        "the processes it ran), which the machine's other load changes less.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    verdicts = []
    for command in COMMANDS:
        base, base_cpu = medians[command.label, own.label], cpu[command.label, own.label]
        cells = [f"{base:.2f} s / {base_cpu:.2f} s"]
        for repo in grown:
            value, used = medians[command.label, repo.label], cpu[command.label, repo.label]
            cells.append(f"{value:.2f} s ({value / base:.1f}x) / {used:.2f} s ({used / base_cpu:.1f}x)")
            goal = GOALS[command.kind].get(repo.models)
            if goal is not None:
                verdicts.append((command, repo, value / base, used / base_cpu, goal))
        lines.append(f"| `{command.label}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Against the goals (per-model commands at most 2x at 300 models, 3x at 1,000; whole-repository commands at most 10x at 300):",
        "",
    ]
    for command, repo, ratio, cpu_ratio, goal in verdicts:
        marks = ["meets" if r <= goal else "MISSES" for r in (ratio, cpu_ratio)]
        lines.append(
            f"- `{command.label}` at {repo.label}, goal {goal:g}x: wall {ratio:.1f}x ({marks[0]}), "
            f"CPU {cpu_ratio:.1f}x ({marks[1]})"
        )
    growth = [r for r in grown if r.models >= 300]
    if len(growth) >= 2:
        low, high = growth[0], growth[-1]
        lines += [
            "",
            f"Growth of the whole-repository commands from {low.models} to {high.models} models ({high.models / low.models:.1f}x the models; linear or slower is the goal):",
            "",
        ]
        for command in COMMANDS:
            if command.kind == "repository":
                factor = medians[command.label, high.label] / medians[command.label, low.label]
                used = cpu[command.label, high.label] / cpu[command.label, low.label]
                lines.append(f"- `{command.label}`: wall {factor:.1f}x, CPU {used:.1f}x")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
