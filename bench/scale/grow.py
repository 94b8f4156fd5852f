"""Grow a scratch clone of this repository to N models and M more commits of canary steps.

The project's own models and releases stay exactly as they are, so the same commands ask the
same questions of every repository: the added models are copies of fraud-detection's record
(`model-0000`, ...), each with a copy of fraud-detection's release on every stack, and the
added commits move their canaries (v1.0.0 -> v1.1.0 in the steps 10, 25, 50, 100, then back),
one model on one stack per commit, round the stacks in turn. The commits are written with
`git fast-import` (seconds for 10,000), dated one a minute up to now.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = "fraud-detection"
RELEASES_KEY = "  modelctl:releases:\n"
ENTRY_INDENT = " " * 4
# The traffic a canary passes through: the block that replaces fraud-detection's `traffic:`.
STEPS = (
    {"v1.0.0": 90, "v1.1.0": 10},
    {"v1.0.0": 75, "v1.1.0": 25},
    {"v1.0.0": 50, "v1.1.0": 50},
    {"v1.0.0": 0, "v1.1.0": 100},
    {"v1.0.0": 100, "v1.1.0": 0},
)
IDENTITY = "bench <bench@example.invalid>"


def git(root: Path, *args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True, check=True)
    return done.stdout.decode()


@dataclass
class StackFile:
    """A stack file as its text before the added entries, and one text per added model."""

    path: str
    head: str
    template: list[str]
    entries: dict[str, str] = field(default_factory=dict)
    step: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path, path: str) -> StackFile:
        text = (root / path).read_text(encoding="utf-8")
        if RELEASES_KEY not in text:
            raise SystemExit(f"{path}: no {RELEASES_KEY.strip()} block to grow")
        lines = text.split(RELEASES_KEY, 1)[1].splitlines(keepends=True)
        if any(line.strip() and not line.startswith(ENTRY_INDENT) for line in lines):
            raise SystemExit(f"{path}: the releases block must end the file to grow it")
        start = lines.index(f"{ENTRY_INDENT}{TEMPLATE}:\n")
        end = next(
            (i for i in range(start + 1, len(lines)) if re.match(rf"{ENTRY_INDENT}\S", lines[i])), len(lines)
        )
        return cls(path, text if text.endswith("\n") else text + "\n", lines[start:end])

    def add(self, model: str) -> None:
        self.entries[model] = self._entry(model, None)

    def next_step(self, model: str) -> None:
        """The model's next canary step (one that changes its entry)."""
        before = self.entries[model]
        while self.entries[model] == before:
            self.step[model] = (self.step.get(model, -1) + 1) % len(STEPS)
            self.entries[model] = self._entry(model, STEPS[self.step[model]])

    def text(self) -> str:
        return self.head + "".join(self.entries.values())

    def _entry(self, model: str, traffic: dict[str, int] | None) -> str:
        lines = [f"{ENTRY_INDENT}{model}:\n", *self.template[1:]]
        if traffic is None:
            return "".join(lines)
        at = lines.index(f"{ENTRY_INDENT}  traffic:\n")
        end = next(i for i in range(at + 1, len(lines)) if not lines[i].startswith(f"{ENTRY_INDENT}    "))
        weights = [f"{ENTRY_INDENT}    {version}: {weight}\n" for version, weight in traffic.items()]
        return "".join([*lines[: at + 1], *weights, *lines[end:]])


def model_text(root: Path, name: str) -> str:
    text = (root / "models" / TEMPLATE / "model.yaml").read_text(encoding="utf-8")
    return text.replace(TEMPLATE, name)


def grow(source: Path, dest: Path, models: int, commits: int, seed: int = 0) -> Path:
    """Clone `source` (its HEAD) to `dest` and grow it to `models` models and `commits` more commits.

    Parameters
    ----------
    source
        This repository.
    dest
        A folder that does not exist yet.
    models
        How many models the grown repository registers (the project's own included).
    commits
        How many commits of canary steps follow the one adding the models (0 for none).
    seed
        Chooses the model each commit steps.

    Returns
    -------
    Path
        `dest`, on a branch `main`.
    """
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(source), str(dest)], check=True)
    git(dest, "checkout", "-q", "-B", "main")
    for key, value in (("user.name", "bench"), ("user.email", "bench@example.invalid")):
        git(dest, "config", key, value)
    own = sorted(p.parent.name for p in (dest / "models").glob("*/model.yaml"))
    added = [f"model-{i:04d}" for i in range(max(0, models - len(own)))]
    paths = sorted(p.name for p in dest.glob("Pulumi.*.yaml") if p.name.count(".") == 2)
    stacks = [StackFile.read(dest, path) for path in paths]
    for name in added:
        for stack in stacks:
            stack.add(name)
    files = {f"models/{name}/model.yaml": model_text(dest, name) for name in added}
    files.update({stack.path: stack.text() for stack in stacks})
    rng = random.Random(seed)
    moves = [(stacks[i % len(stacks)], rng.choice(added)) for i in range(commits)] if added else []
    _import(dest, files, moves)
    git(dest, "reset", "-q", "--hard", "main")
    return dest


def _import(root: Path, files: dict[str, str], moves: list[tuple[StackFile, str]]) -> None:
    """One commit adding `files`, then one commit per move, streamed to `git fast-import`."""
    start = int(time.time()) - 60 * (len(moves) + 1)
    parent = git(root, "rev-parse", "HEAD").strip()
    proc = subprocess.Popen(["git", "fast-import", "--quiet", "--force"], cwd=root, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    out = proc.stdin

    def data(text: str) -> bytes:
        raw = text.encode()
        return b"data %d\n%s\n" % (len(raw), raw)

    marks = 0

    def blob(text: str) -> str:
        nonlocal marks
        marks += 1
        out.write(b"blob\nmark :%d\n" % marks + data(text))
        return f":{marks}"

    def commit(when: int, message: str, changes: list[tuple[str, str]]) -> None:
        out.write(b"commit refs/heads/main\n")
        out.write(f"author {IDENTITY} {when} +0000\ncommitter {IDENTITY} {when} +0000\n".encode())
        out.write(data(message))
        if when == start:
            out.write(f"from {parent}\n".encode())
        out.write(b"".join(f"M 100644 {mark} {path}\n".encode() for path, mark in changes))
        out.write(b"\n")

    commit(start, f"bench: {len(files)} files grown", [(path, blob(text)) for path, text in files.items()])
    # Each stack file's versions one after another, so fast-import stores each as a delta of the last.
    changes: dict[int, tuple[str, str]] = {}
    for stack in {s.path: s for s, _ in moves}.values():
        for index, (moved, model) in enumerate(moves):
            if moved is stack:
                stack.next_step(model)
                changes[index] = (f"{model} {describe(STEPS[stack.step[model]])}", blob(stack.text()))
    for index, (stack, _) in enumerate(moves):
        what, mark = changes[index]
        name = stack.path.removeprefix("Pulumi.").removesuffix(".yaml")
        commit(start + 60 * (index + 1), f"canary: {what} on {name}", [(stack.path, mark)])
    out.close()
    if proc.wait() != 0:
        raise SystemExit("git fast-import failed")


def describe(traffic: dict[str, int]) -> str:
    return ", ".join(f"{version} {weight}%" for version, weight in traffic.items())
