"""The few git operations modelctl needs, through the git command line."""

from __future__ import annotations

import atexit
import subprocess
import threading
from collections.abc import Iterator, Sequence
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
    return objects(root).text(f"{rev}:{path}")


class Objects:
    """Reads objects of one repository through a single `git cat-file --batch` process, so
    reading a thousand files at a revision costs one process, not a thousand."""

    def __init__(self, root: Path) -> None:
        self._proc = subprocess.Popen(
            ["git", "cat-file", "--batch"], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._lock = threading.Lock()
        atexit.register(self.close)

    def text(self, name: str) -> str | None:
        """The text of a blob named as git names objects (`<rev>:<path>`, a blob's hash), or
        None where there is no such blob."""
        found = self.read(name)
        return _universal_newlines(found.decode("utf-8")) if found is not None else None

    def read(self, name: str) -> bytes | None:
        """The bytes of the object `name`, or None where it does not exist."""
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None
        assert stdout is not None
        with self._lock:
            stdin.write(name.encode() + b"\n")
            stdin.flush()
            header = stdout.readline().split()
            if len(header) != 3 or header[1] != b"blob":
                if len(header) == 3:
                    stdout.read(int(header[2]) + 1)
                return None
            data = stdout.read(int(header[2]) + 1)
        return data[:-1]

    def close(self) -> None:
        with self._lock:
            if self._proc.poll() is None:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait()


def stream(root: Path, names: Sequence[str]) -> Iterator[str | None]:
    """The text of each blob of `names` in turn (None where there is none), read by a `git
    cat-file --batch` of its own that runs ahead while the caller works on each (a thread
    writes the names, so neither side waits on a full pipe)."""
    proc = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None
    assert stdout is not None

    def feed() -> None:
        try:
            with stdin:
                stdin.writelines(name.encode() + b"\n" for name in names)
        except (BrokenPipeError, ValueError):
            pass  # the reader stopped early

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        for _ in names:
            header = stdout.readline().split()
            if len(header) != 3:
                yield None
                continue
            data = stdout.read(int(header[2]) + 1)[:-1]
            yield _universal_newlines(data.decode("utf-8")) if header[1] == b"blob" else None
    finally:
        stdout.close()
        proc.kill()
        proc.wait()
        writer.join()


def _universal_newlines(text: str) -> str:
    """As a file read in text mode reads it."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


# The readers of the repositories used last; an older one is closed (a long test run or a
# server meets many repositories, each reader holds a process and two pipes).
_READERS: dict[Path, Objects] = {}
_READERS_KEPT = 4
_READERS_LOCK = threading.Lock()


def objects(root: Path) -> Objects:
    """The object reader of the repository at `root`, started on first use."""
    with _READERS_LOCK:
        reader = _READERS.pop(root, None) or Objects(root)
        _READERS[root] = reader
        while len(_READERS) > _READERS_KEPT:
            _READERS.pop(next(iter(_READERS))).close()
        return reader


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
