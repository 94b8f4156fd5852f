"""The few git operations modelctl needs, through the git command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from modelctl.core.errors import UserError


def git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise UserError(
            str(root),
            f"git {args[0]} failed: {detail[-1] if detail else proc.returncode}",
            "fix the repository state and retry",
        )
    return proc.stdout


def resolve(root: Path, rev: str) -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise UserError(
            rev,
            "not a commit in this repository",
            "pass a branch, tag or commit that exists (e.g. origin/main)",
        )
    return proc.stdout.strip()


def show(root: Path, rev: str, path: str) -> str | None:
    """A file's text at a revision, or None where it did not exist."""
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").strip()


def tracked_files(root: Path) -> set[str]:
    """Every path git tracks in the working tree, relative to `root` (none outside a repository)."""
    return set(git(root, "ls-files", "-z", check=False).split("\0")) - {""}


def dirty_paths(root: Path, *paths: str) -> list[str]:
    """Paths (of those given, or all) with uncommitted changes, staged or not."""
    out = git(root, "status", "--porcelain", "--untracked-files=all", "--", *paths)
    return [line[3:] for line in out.splitlines() if line]


def commit_only(root: Path, paths: list[str], message: str) -> str:
    """Commit exactly these paths, leaving anything else staged or changed untouched."""
    git(root, "add", "--", *paths)
    git(root, "commit", "--quiet", "--only", "-m", message, "--", *paths)
    return head(root)


def shallow_commits(root: Path) -> set[str]:
    """The boundary commits of a shallow clone (their parents were not fetched); none in a full one."""
    path = Path(git(root, "rev-parse", "--git-path", "shallow").strip())
    shallow = path if path.is_absolute() else root / path
    return set(shallow.read_text().split()) if shallow.is_file() else set()


def deepen(root: Path, commits: int) -> None:
    """Fetch `commits` more commits of history behind a shallow clone's boundary.

    Raises
    ------
    UserError
        The fetch failed or fetched nothing (no remote, no network): the error says the clone is
        shallow.
    """
    before = shallow_commits(root)
    proc = subprocess.run(
        ["git", "fetch", "--quiet", f"--deepen={commits}"], cwd=root, capture_output=True, text=True
    )
    detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    if proc.returncode != 0 or shallow_commits(root) == before:
        raise UserError(
            str(root),
            "is a shallow clone (git clone --depth) without the history this needs, and deepening it "
            f"failed: {detail[-1] if detail else 'nothing more was fetched'}",
            "fetch the history ('git fetch --unshallow') or clone without --depth",
        )
