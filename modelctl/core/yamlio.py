"""YAML reading and writing that keeps comments, key order and formatting, written atomically."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from modelctl.core.errors import UserError


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def load(path: Path, display: str | None = None) -> Any:
    """Read a YAML file for editing or validation; a syntax error is a UserError."""
    shown = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(shown, "file not found", "create it or check the path") from None
    return loads(text, shown)


def loads(text: str, display: str) -> Any:
    try:
        return _yaml().load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise UserError(display, f"invalid YAML{line}: {problem}", "fix the syntax") from None


def dumps(data: Any) -> str:
    buf = io.StringIO()
    _yaml().dump(data, buf)
    return buf.getvalue()


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step, so a crash never leaves it half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_key(mapping: CommentedMap, key: str) -> None:
    """Delete `key` from a round-trip mapping."""
    mapping.pop(key, None)


def insert_key(mapping: CommentedMap, after: str | None, key: str, value: Any) -> None:
    """Add `key` right after the key `after` (None: first)."""
    position = list(mapping).index(after) + 1 if after is not None else 0
    mapping.insert(position, key, value)


def dump_file(path: Path, data: Any) -> None:
    write_atomic(path, dumps(data))


def line_of(data: Any, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of a key path in a round-trip-loaded document, when known."""
    node = data
    line: int | None = None
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line
