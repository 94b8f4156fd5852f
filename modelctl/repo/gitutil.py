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
