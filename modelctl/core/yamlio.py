"""YAML reading and writing that keeps comments, key order and formatting, written atomically."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.tokens import CommentToken

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


# Editing keys without moving comments. ruamel attaches the comment lines that follow a block to
# the last line of that block (its deepest last key or item), so lines that belong to what comes
# next would vanish with a removed key or end up above an inserted one. These helpers move such
# lines: a comment line after a key's block that is indented no deeper than the key belongs to
# what follows it.


def remove_key(mapping: CommentedMap, key: str) -> None:
    """Delete `key` and its block; comment lines after the block that belong to what follows stay.

    The key's own end-of-line comment and the comments inside its block go with it.
    """
    if key not in mapping:
        return
    keys = list(mapping)
    _, below = _split(_tail_text(mapping, key), _column(mapping))
    del mapping[key]
    mapping.ca.items.pop(key, None)
    index = keys.index(key)
    if below and index > 0:
        _append(mapping, keys[index - 1], below)


def insert_key(mapping: CommentedMap, after: str | None, key: str, value: Any) -> None:
    """Add `key` right after the key `after` (None: first); the comment lines that were above
    the key following `after` stay above it."""
    value = _commented(value)
    if after is None:
        mapping.insert(0, key, value)
        return
    container, slot_key, slot = _tail(mapping, after)
    own, below = _split(_token_text(container, slot_key, slot), _column(mapping))
    _set_text(container, slot_key, slot, own)
    mapping.insert(list(mapping).index(after) + 1, key, value)
    if below:
        _append(mapping, key, below)


def _commented(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, CommentedMap):
        return CommentedMap((k, _commented(v)) for k, v in value.items())
    return value


def _column(mapping: CommentedMap) -> int:
    """The column of the mapping's keys, from any key read from the file (0 if none was)."""
    for key in mapping:
        if key in mapping.lc.data:
            return int(mapping.lc.key(key)[1])
    return 0


def _tail(container: Any, key: Any) -> tuple[Any, Any, int]:
    """(node, key, slot) of the comment after the last line of `key`'s block."""
    value = container[key]
    if isinstance(value, CommentedMap | CommentedSeq) and value and not value.fa.flow_style():
        return _tail(value, list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1)
    return container, key, 0 if isinstance(container, CommentedSeq) else 2


def _tail_text(mapping: CommentedMap, key: Any) -> str:
    return _token_text(*_tail(mapping, key))


def _token_text(node: Any, key: Any, slot: int) -> str:
    entry = node.ca.items.get(key)
    token = entry[slot] if entry else None
    return str(token.value) if token is not None else ""


def _set_text(node: Any, key: Any, slot: int, text: str) -> None:
    entry = node.ca.items.setdefault(key, [None, None, None, None])
    if text in ("", "\n"):
        entry[slot] = None
    elif entry[slot] is None:
        entry[slot] = CommentToken(text, CommentMark(0), None)
    else:
        entry[slot].value = text


def _append(mapping: CommentedMap, key: Any, lines: str) -> None:
    """Add full comment lines after `key`'s block."""
    node, slot_key, slot = _tail(mapping, key)
    _set_text(node, slot_key, slot, (_token_text(node, slot_key, slot) or "\n") + lines)


def _split(text: str, column: int) -> tuple[str, str]:
    """A trailing comment as (what stays with its block, the lines from the first one indented
    at most `column` on, with the blank lines just before it)."""
    eol, newline, rest = text.partition("\n")
    lines = rest.splitlines(keepends=True)
    for found, line in enumerate(lines):
        if line.strip() and len(line) - len(line.lstrip()) <= column:
            start = found
            while start > 0 and not lines[start - 1].strip():
                start -= 1
            return eol + newline + "".join(lines[:start]), "".join(lines[start:])
    return text, ""


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


def line_of_key(data: Any, key: str) -> int | None:
    """The 1-based line of a dotted key path such as `config.modelctl:releases.m.traffic.v1.2.0`,
    where keys may themselves hold dots (versions): at each mapping the longest key that the
    rest of the path starts with is taken."""
    node, rest, line = data, key, None
    while rest and isinstance(node, CommentedMap | CommentedSeq):
        part = _longest_prefix(node, rest)
        if part is None:
            break
        line = line_of(node, (part,))
        node, rest = node[part], rest[len(str(part)) + 1 :]
    return line


def _longest_prefix(node: CommentedMap | CommentedSeq, path: str) -> str | int | None:
    keys: list[str | int] = list(range(len(node))) if isinstance(node, CommentedSeq) else list(node)
    matches = [k for k in keys if path == str(k) or path.startswith(f"{k}.")]
    return max(matches, key=lambda k: len(str(k)), default=None)
