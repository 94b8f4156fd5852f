"""YAML in two modes: a fast reader for reading only, and the round trip for editing.

`read` turns a document into plain data with libyaml (PyYAML's C parser): what reading only
needs, about twenty times faster than the round trip. `loads` and `load` read with ruamel's
round trip, which keeps comments, key order and every key's line, for the files an edit
writes and for exact error messages; `dumps` and `write_atomic` write. Both readers follow YAML
1.2 as ruamel does (`yes` is text, `017` is 17), and `read` gives up (`Unsure`) wherever it
could differ from the round trip, so a caller falls back to `loads` and nothing changes but
the time.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml._yaml import CParser

from modelctl.core.errors import UserError

if TYPE_CHECKING:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq


class Unsure(Exception):
    """`read` cannot promise the values the round trip would give: read the text with `loads`."""


# Tags the parser gives the scalars it resolves itself: `_PLAIN` ones are typed by `_scalar`
# (YAML 1.2's core schema as ruamel applies it), `_TEXT` ones (quoted, block, `! x`) are text.
_PLAIN, _TEXT = "plain", "text"
_CONSTANTS: dict[str, Any] = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
}
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")
# Numbers in any other notation YAML 1.2 allows (0x1F, 0o17, 017, 1_000): left to the round trip.
_OTHER_INT = re.compile(r"(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?[0-9_]+|[-+]?0x[0-9a-fA-F_]+)\Z")
_FLOAT = re.compile(
    r"""(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?)\Z""",
    re.X,
)
_SPECIAL_FLOATS = {
    **{f"{sign}.{inf}": float(f"{sign}inf") for sign in ("", "+", "-") for inf in ("inf", "Inf", "INF")},
    **{f".{nan}": float("nan") for nan in ("nan", "NaN", "NAN")},
}
_TIMESTAMP = re.compile(
    r"""(?P<year>[0-9]{4})-(?P<month>[0-9][0-9]?)-(?P<day>[0-9][0-9]?)
    (?:(?:[Tt]|[ \t]+)(?P<hour>[0-9][0-9]?):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})
    (?:\.(?P<fraction>[0-9]{0,6}))?
    (?:[ \t]*(?P<tz>Z|(?P<sign>[-+])(?P<tz_hour>[0-9][0-9]?)(?::(?P<tz_minute>[0-9]{2}))?))?)?\Z""",
    re.X,
)
# What ruamel resolves as a timestamp: a bare date, or a date and a time (loosely written).
_LOOKS_LIKE_TIMESTAMP = re.compile(
    r"""[0-9]{4}-[0-9]{2}-[0-9]{2}\Z
    |[0-9]{4}-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9]{2}:[0-9]{2}(?:\.[0-9]*)?
    (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9]{2})?))?\Z""",
    re.X,
)


class _Parser(CParser):
    """libyaml's parser and composer; typing scalars is left to `_scalar`."""

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        return _PLAIN if kind is yaml.ScalarNode and implicit[0] else _TEXT

    def descend_resolver(self, parent: Any, index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


def read(text: str) -> Any:
    """The document in `text` as plain data: dicts (in the file's key order), lists, str, int,
    float, bool, None, `datetime.date` and `datetime.datetime`, equal to what `loads` gives.

    Raises
    ------
    Unsure
        The text has what only the round trip reads for sure (a directive, a tag, an anchor
        reused, a merge key, a duplicate key, a number in another notation than decimal) or
        does not parse: read it with `loads`, which also says where an error is.
    """
    if text.startswith("%") or "\n%" in text:
        raise Unsure("a directive")
    parser = _Parser(text)
    try:
        node = parser.get_single_node()
    except yaml.YAMLError as exc:
        raise Unsure(str(exc)) from None
    finally:
        parser.dispose()
    return None if node is None else _value(node, set())


def _value(node: Any, seen: set[int]) -> Any:
    if node.tag == _PLAIN:
        return _scalar(node.value)
    if node.tag == _TEXT and isinstance(node, yaml.ScalarNode):
        return node.value
    if node.tag not in (_PLAIN, _TEXT) or id(node) in seen:
        raise Unsure("a tag or an alias")
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        return [_value(item, seen) for item in node.value]
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = _value(key_node, seen)
        if not isinstance(key, str | int | float | bool | None | dt.date) or key in mapping:
            raise Unsure("a duplicate or complex key")
        mapping[key] = _value(value_node, seen)
    return mapping


def _scalar(value: str) -> Any:
    """A plain scalar's value under YAML 1.2's core schema, as ruamel resolves it."""
    if value in _CONSTANTS:
        return _CONSTANTS[value]
    return _number(value) if value[0] in "-+0123456789.<=" else value


def _number(value: str) -> Any:
    """A plain scalar that may be a number, a date or a time."""
    if value in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[value]
    if _FLOAT.match(value):
        if "_" in value:
            raise Unsure("a number with '_'")
        return float(value)
    if _INT.match(value):
        return int(value)
    if _OTHER_INT.match(value) or value in ("<<", "="):
        raise Unsure("a number in another notation, or a merge key")
    return _timestamp(value) if _LOOKS_LIKE_TIMESTAMP.match(value) else value


def _timestamp(value: str) -> dt.date | dt.datetime:
    found = _TIMESTAMP.match(value)
    if found is None:
        raise Unsure("a timestamp the round trip reads its own way")
    part = found.groupdict()
    try:
        day = dt.date(int(part["year"]), int(part["month"]), int(part["day"]))
        return day if part["hour"] is None else _time_of(day, part)
    except ValueError:
        raise Unsure("a date or time that does not exist") from None


def _time_of(day: dt.date, part: dict[str, str]) -> dt.datetime:
    zone = None
    if part["sign"]:
        offset = dt.timedelta(hours=int(part["tz_hour"]), minutes=int(part["tz_minute"] or 0))
        zone = dt.timezone(-offset if part["sign"] == "-" else offset, name=part["tz"])
    elif part["tz"] == "Z":
        zone = dt.timezone(dt.timedelta(0), name="Z")
    micro = int((part["fraction"] or "").ljust(6, "0"))
    time = dt.time(int(part["hour"]), int(part["minute"]), int(part["second"]), micro, zone)
    return dt.datetime.combine(day, time)


def _yaml() -> YAML:
    from ruamel.yaml import YAML

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
    """Read `text` with the round trip (comments, order and lines kept); a syntax error is a
    UserError naming `display` and the line."""
    from ruamel.yaml.error import YAMLError

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


def edit_block(text: str, display: str, path: tuple[str, ...], edit: Callable[[Any], None]) -> str:
    """`text` with the block-style mapping at the key `path` changed by `edit` (given that
    mapping as the round trip reads it, to change in place), comments kept.

    Only that mapping's lines are read and written again (with the comment lines that follow
    it, which the round trip attaches to its last line), so editing one entry of a long file
    costs what the entry costs; the rest of the file is left byte for byte. Where the lines
    cannot be cut out for sure (flow style, tabs, anchors, tags, a key written twice...), the
    whole document goes through the round trip instead.

    Raises
    ------
    UserError
        The text is not valid YAML (`display` names the file).
    """
    span = block_span(text, path)
    if span is not None:
        start, end = span
        head = "".join(f"{'  ' * depth}{key}:\n" for depth, key in enumerate(path[:-1]))
        try:
            doc = loads(head + text[start:end], display)
        except UserError:
            doc = None  # cut wrongly after all: the whole document says where the error is
        if doc is not None:
            edit(_at(doc, path))
            out = dumps(doc)
            if out.startswith(head):
                return text[:start] + out[len(head) :] + text[end:]
    doc = loads(text, display)
    edit(_at(doc, path))
    return dumps(doc)


def _at(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def block_span(text: str, path: tuple[str, ...]) -> tuple[int, int] | None:
    """Where the lines of the mapping at `path` start (its key's line) and end (after the
    comment lines that follow it) in `text`, as offsets, if each key of the path is on a line
    of its own, indented two spaces a level, once in its parent, and nothing in the text makes
    cutting it out unsafe; else None."""
    if unsafe_to_cut(text):
        return None
    low, high = 0, len(text)
    for depth, key in enumerate(path):
        indent = 2 * depth
        found = re.compile(f"^{' ' * indent}{re.escape(key)}:.*$", re.MULTILINE)
        keys = [m for m in found.finditer(text, low, high) if _KEY_LINE.fullmatch(m[0])]
        if len(keys) != 1:
            return None
        # The block ends at the next line indented no deeper than its key that is not a comment.
        after = min(keys[0].end() + 1, high)
        ends = _BLOCK_END[indent].search(text, after, high)
        low = keys[0].start() if depth == len(path) - 1 else after
        high = ends.start() if ends else high
    return low, high


def is_key_line(line: str) -> bool:
    """Whether `line` is a plain key with nothing after its colon but a comment."""
    return _KEY_LINE.fullmatch(line) is not None


def unsafe_to_cut(text: str) -> bool:
    """Directives, document markers, tabs, merge keys, anchors, aliases or tags anywhere."""
    if "\t" in text or "<<" in text or text.startswith(("%", "---", "...")):
        return True
    if "\n%" in text or "\n---" in text or "\n..." in text:
        return True
    return any(mark in text for mark in "&*!") and _ANCHOR_OR_TAG.search(text) is not None


# A key line with nothing after the colon but a comment; an anchor, alias or tag where a token starts.
_KEY_LINE = re.compile(r" *[^\s#:'\"{}\[\],&*!|>%@`](?:[^:#\s]|:(?=\S)|[ ](?=[^\s#]))*:[ ]*(?:#[^\n]*)?\n?")
_ANCHOR_OR_TAG = re.compile(r"[\s\[{,:-][&*!]")
# Per indentation: the first line of what follows a block whose key is indented that much.
_BLOCK_END = {indent: re.compile(f"^ {{0,{indent}}}[^ #\n]", re.MULTILINE) for indent in range(0, 40, 2)}


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
    from ruamel.yaml.comments import CommentedMap

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
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

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
        from ruamel.yaml.error import CommentMark
        from ruamel.yaml.tokens import CommentToken

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
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

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
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    node, rest, line = data, key, None
    while rest and isinstance(node, CommentedMap | CommentedSeq):
        part = _longest_prefix(node, rest)
        if part is None:
            break
        line = line_of(node, (part,))
        node, rest = node[part], rest[len(str(part)) + 1 :]
    return line


def _longest_prefix(node: CommentedMap | CommentedSeq, path: str) -> str | int | None:
    from ruamel.yaml.comments import CommentedSeq

    keys: list[str | int] = list(range(len(node))) if isinstance(node, CommentedSeq) else list(node)
    matches = [k for k in keys if path == str(k) or path.startswith(f"{k}.")]
    return max(matches, key=lambda k: len(str(k)), default=None)
