"""DVC's content-addressed store, as modelctl uses it: dvc.lock entries, objects, verified copies.

DVC 3 keeps every file under `files/md5/<2 hex>/<30 hex>` of its md5, in the cache
(`.dvc/cache`) and in every remote alike. Reading an object here always streams it and
checks both its md5 and its sha256, so a tampered object is never taken for the real one.
Remotes are local paths or fsspec URLs (s3:// needs the `s3` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from fsspec.core import url_to_fs

from modelctl.core import yamlio
from modelctl.core.errors import UserError

LOCK_FILE = "dvc.lock"
CHUNK = 1 << 20


def object_path(md5: str) -> str:
    """Where DVC 3 stores the file with this md5, relative to a cache or remote root."""
    return f"files/md5/{md5[:2]}/{md5[2:]}"


# ---------------------------------------------------------------- dvc.lock


@dataclass(frozen=True)
class LockedStage:
    name: str
    deps: list[str]
    params: dict[str, Any]
    outs: dict[str, tuple[str, int]]  # path -> (md5, size)


def locked_stage(root: Path, name: str) -> LockedStage:
    """One stage's entry in dvc.lock: what it read and the md5 of what it wrote."""
    path = root / LOCK_FILE
    if not path.is_file():
        raise UserError(LOCK_FILE, "file not found", "run 'dvc repro' and commit dvc.lock")
    stages = (yamlio.load(path, LOCK_FILE) or {}).get("stages") or {}
    if name not in stages:
        raise UserError(LOCK_FILE, f"no stage {name!r}", "run 'dvc repro' and commit dvc.lock", key="stages")
    entry = stages[name]
    params: dict[str, Any] = {}
    for values in (entry.get("params") or {}).values():
        params.update(values)
    return LockedStage(
        name=name,
        deps=[dep["path"] for dep in entry.get("deps") or []],
        params=params,
        outs={out["path"]: (out["md5"], int(out.get("size", 0))) for out in entry.get("outs") or []},
    )


def stale_lock_deps(root: Path, tracked: set[str]) -> dict[str, list[str]]:
    """Git-tracked dependencies whose dvc.lock entry no longer matches the working tree.

    Returns {file: [stages]} for code files whose md5 (DVC 3 hashes a file's bytes as they are)
    and params files whose recorded values differ from the working tree; `tracked` holds the
    repository-relative paths git tracks. Directories are left to `dvc status`. Reads files
    only, so it is fast enough for every `modelctl check`.
    """
    path = root / LOCK_FILE
    if not path.is_file():
        return {}
    stale: dict[str, list[str]] = {}
    for name, entry in ((yamlio.load(path, LOCK_FILE) or {}).get("stages") or {}).items():
        changed = [
            dep["path"]
            for dep in entry.get("deps") or []
            if dep["path"] in tracked and dep.get("md5") != _file_md5(root / dep["path"])
        ]
        changed += [
            params_file
            for params_file, values in (entry.get("params") or {}).items()
            if params_file in tracked and _json(values) != _params_now(root / params_file, values)
        ]
        for dep in changed:
            stale.setdefault(dep, []).append(name)
    return stale


def _file_md5(path: Path) -> str | None:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() if path.is_file() else None


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _params_now(path: Path, recorded: dict[str, Any]) -> Any:
    """The current values of the dotted keys (`models.churn.data`) a stage recorded."""
    if not path.is_file():
        return None
    doc = _json(yamlio.load(path, path.name))
    values: dict[str, Any] = {}
    for key in recorded:
        node = doc
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[key] = node
    return values


# ---------------------------------------------------------------- the dvc command


def run_dvc(root: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Run dvc in `root` with `env` (default: this process's environment); stage commands find
    this interpreter's `python`."""
    env = dict(os.environ if env is None else env, DVC_NO_ANALYTICS="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        detail = next((line for line in reversed(lines) if "ERROR" in line), lines[-1] if lines else "")
        raise UserError(
            str(root),
            f"dvc {args[0]} failed: {detail.strip() or proc.returncode}",
            f"run 'dvc {' '.join(args)}' there to see the full output",
        )
    return proc.stdout


def changed_stages(root: Path, stages: list[str]) -> list[str]:
    """The stages whose deps, params or outputs differ from dvc.lock (empty when up to date)."""
    report = json.loads(run_dvc(root, "status", "--json", *stages) or "{}")
    return sorted(report)


@dataclass(frozen=True)
class DvcConfig:
    remote: str | None  # the default remote's URL, resolved as DVC resolves it
    cache: Path


def repo_config(root: Path) -> DvcConfig:
    values = dict(
        line.split("=", 1) for line in run_dvc(root, "config", "--list").splitlines() if "=" in line
    )
    name = values.get("core.remote")
    remote = values.get(f"remote.{name}.url") if name else None
    cache = Path(run_dvc(root, "cache", "dir").strip())
    return DvcConfig(remote=remote, cache=cache)


# ---------------------------------------------------------------- objects


@dataclass(frozen=True)
class Digest:
    md5: str
    sha256: str
    size: int


class _Hasher:
    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)

    def digest(self) -> Digest:
        return Digest(self.md5.hexdigest(), self.sha256.hexdigest(), self.size)


def _copy(source: BinaryIO, target: BinaryIO | None) -> Digest:
    hasher = _Hasher()
    while chunk := source.read(CHUNK):
        hasher.update(chunk)
        if target is not None:
            target.write(chunk)
    return hasher.digest()


def digest_file(path: Path) -> Digest:
    with path.open("rb") as handle:
        return _copy(handle, None)


def _mismatch(found: Digest, md5: str, sha256: str, size: int | None) -> str:
    """What differs from the expected content, or '' when it is the same."""
    if found.md5 != md5:
        return f"md5 {found.md5} != expected {md5}"
    if found.sha256 != sha256:
        return f"sha256 {found.sha256} != expected {sha256}"
    if size is not None and found.size != size:
        return f"size {found.size} != expected {size}"
    return ""


@dataclass(frozen=True)
class Location:
    """A cache or remote root, with the filesystem that reaches it."""

    url: str
    fs: Any
    root: str

    @classmethod
    def of(cls, url: str) -> Location:
        try:
            fs, root = url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise UserError(
                url, f"cannot open this store: {exc}", "install modelctl[s3] for s3:// URLs"
            ) from None
        return cls(url=url, fs=fs, root=root.rstrip("/"))

    def object(self, md5: str) -> str:
        return f"{self.root}/{object_path(md5)}"

    def display(self, md5: str) -> str:
        return f"{self.url.rstrip('/')}/{object_path(md5)}"


ObjectState = Literal["ok", "missing", "tampered"]


@dataclass(frozen=True)
class Check:
    state: ObjectState
    detail: str = ""


def check_object(location: Location, md5: str, sha256: str, size: int | None = None) -> Check:
    """Whether the store holds exactly this content under its md5."""
    path = location.object(md5)
    if not location.fs.exists(path):
        return Check("missing", f"{location.display(md5)} not found")
    with location.fs.open(path, "rb") as handle:
        problem = _mismatch(_copy(handle, None), md5, sha256, size)
    return Check("tampered", f"{location.display(md5)}: {problem}") if problem else Check("ok")


def fetch(sources: list[Location], md5: str, sha256: str, out: Path, size: int | None = None) -> Location:
    """Write the object to `out` from the first store holding it, verified, or write nothing.

    A store whose copy does not match is an error, never skipped: it has been tampered with.
    """
    for location in sources:
        path = location.object(md5)
        if not location.fs.exists(path):
            continue
        with location.fs.open(path, "rb") as source, _replacing(out) as target:
            problem = _mismatch(_copy(source, target), md5, sha256, size)
            if problem:
                raise UserError(
                    location.display(md5),
                    f"content does not match the registry ({problem}); nothing was written",
                    "restore the object: 'modelctl reproduce <model> <version>' rebuilds and pushes it",
                )
        return location
    looked = ", ".join(location.url for location in sources) or "no store"
    raise UserError(
        object_path(md5),
        f"object not found in {looked}",
        "rebuild and push it with 'modelctl reproduce --all' (or 'dvc push' from the clone that built it)",
    )


@contextmanager
def _replacing(out: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `out` that replaces it on success and vanishes on any error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def push(source: Path, location: Location, md5: str, sha256: str) -> None:
    """Copy a local file into the store under its md5, checking it on the way; replaces a bad copy."""
    final = location.object(md5)
    tmp = f"{final}.{os.getpid()}.part"
    location.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    try:
        with source.open("rb") as reader, location.fs.open(tmp, "wb") as writer:
            problem = _mismatch(_copy(reader, writer), md5, sha256, None)
        if problem:
            raise UserError(
                str(source), f"content does not match the registry ({problem})", "rebuild it with 'dvc repro'"
            )
        location.fs.mv(tmp, final)
    finally:
        if location.fs.exists(tmp):
            location.fs.rm(tmp)
