"""The desired state in the working tree or at any git revision, read one way.

`read_state(root)` reads the working tree, `read_state(root, rev)` the files committed at `rev` (git is only
read: no checkout, no temporary folder); both parse and cross-check through
`modelctl.core.state.load_state`. `Revision` is the source behind it, for a single file at a
revision (history, immutability checks, the registry's history).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from modelctl.core.state import Folder, State, load_state, model_file, stack_name
from modelctl.repo import gitutil


@dataclass(frozen=True)
class Revision:
    """The desired-state files as committed at `commit` (a full hash, see `gitutil.resolve`)."""

    root: Path
    commit: str

    def read(self, path: str) -> str | None:
        return gitutil.show(self.root, self.commit, path)

    def model_names(self) -> list[str]:
        listed = gitutil.git(self.root, "ls-tree", "-r", "--name-only", self.commit, "--", "models")
        return sorted(name for path in listed.splitlines() if path == model_file(name := path.split("/")[1]))

    def stack_names(self) -> list[str]:
        listed = gitutil.git(self.root, "ls-tree", "--name-only", self.commit)
        return sorted(name for path in listed.splitlines() if (name := stack_name(path)))


def read_state(root: Path, rev: str | None = None, only: Collection[str] | None = None) -> State:
    """The desired state of the working tree (`rev` None) or as committed at `rev`.

    Parameters
    ----------
    root
        The repository root.
    rev
        A branch, tag or commit; None for the working tree.
    only
        Read just these models, and only their releases on each stack: what a command about
        those models needs (see `modelctl.core.state.load_state`).

    Raises
    ------
    UserError
        `rev` is not a commit of the repository.
    UserError, UserErrors
        The state is invalid (see `modelctl.core.state.load_state`).
    """
    checked = CheckedFiles.of(root)
    if rev is None:
        return load_state(Folder(root), only, checked)
    return load_state(Revision(root, gitutil.resolve(root, rev)), only, checked)


@dataclass(frozen=True)
class CheckedFiles:
    """Model files found valid, kept by content in the git directory (`modelctl/checked/`, never
    committed; see `modelctl.core.state.parse_model`). Written without syncing to disk: a file
    lost to a crash is only checked again."""

    folder: Path

    @classmethod
    def of(cls, root: Path) -> CheckedFiles | None:
        """The store of the repository at `root`; None outside a git repository."""
        git_dir = gitutil.git(root, "rev-parse", "--git-common-dir", check=False).strip()
        return cls(root / git_dir / "modelctl" / "checked") if git_dir else None

    def get(self, key: str) -> bytes | None:
        try:
            return (self.folder / f"{key}.json").read_bytes()
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.folder / f"{key}.json")
        except OSError:
            pass
