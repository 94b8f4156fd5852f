"""What a stack file said at each commit, read from git alone.

History follows the first parent, so a state counts from the moment it landed on the branch
(a merge commit's date). Times are committer dates, which the committing machine's clock sets:
each is read as no earlier than the commit before it on the branch (a commit is made after its
parent), so a commit dated by a clock that is behind never makes a version look older than the
change before it (`modelctl check` refuses such commits in CI; see `repo.clock`).

In a shallow clone (the analysis CronJob clones with --depth) the oldest fetched commit looks as
if it added every file; history is deepened from the remote until the decision reading it has
what it needs (`enough`), never read from that boundary as if it were a change.

One `git log` of the stack file lists its commits with the file's blob at each; a blob is read
when a snapshot is first asked about it, once however many commits hold it. A stack file is
mostly the same from one commit to the next, so each blob is cut into its releases (the lines
of each `modelctl:releases` entry) and each distinct entry is parsed once: reading a model's
history costs the entries that changed, not the whole file at every commit. A file that cannot
be cut out for sure is parsed whole, as before.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from modelctl.core import credentials, schema, state, yamlio
from modelctl.core.credentials import find_credentials
from modelctl.core.errors import UserError, UserErrors
from modelctl.core.schema import ModelName, Release
from modelctl.core.state import CONFIG_NAMESPACE, parse_stack, stack_file
from modelctl.repo import gitutil

_FIELD, _RECORD = "\x1f", "\x1e"
_RELEASES = f"{CONFIG_NAMESPACE}:releases"
_PATH = ("config", _RELEASES)
# The first line of each entry of the releases block: a key indented four spaces.
_ENTRY = re.compile(r"^    (?=[^ #\n])", re.MULTILINE)
# A line that ends the releases block: indented two spaces or less, not a comment.
_BLOCK_END = re.compile(r"^ {0,2}[^ #\n]", re.MULTILINE)
_ENTRIES: TypeAdapter[dict[ModelName, Release]] = TypeAdapter(dict[ModelName, Release])


@dataclass(frozen=True)
class _Cut:
    """A stack file cut into the rest (its releases block emptied) and its entries' lines."""

    text: str
    rest: str
    # Where the releases block's entries start and end in `text`, and each entry's offset in it.
    start: int
    end: int
    offsets: list[int]
    entries: list[str]
    # The entries this cut has and the one it was made from had not, and the other way round.
    added: list[str]
    removed: list[str]

    def after(self, text: str) -> _Cut | None:
        """The cut of `text`, another version of this file, where the two differ only inside
        the entries (re-cutting only the entries that changed); None where they do not."""
        same_head = _common_prefix(self.text, text)
        same_tail = min(_common_suffix(self.text, text), len(self.text) - same_head, len(text) - same_head)
        old_end = len(self.text) - same_tail
        if same_head <= self.start or old_end > self.end or not self.offsets:
            return None
        first = max(bisect_right(self.offsets, same_head) - 1, 0)
        last = max(bisect_right(self.offsets, old_end - 1), first + 1)
        shift = len(text) - len(self.text)
        low = self.offsets[first]
        high = (self.offsets[last] if last < len(self.offsets) else self.end) + shift
        changed = text[low:high]
        if (
            not changed.endswith("\n")
            or yamlio.unsafe_to_cut(text[max(low - 2, 0) : high + 2])
            or _BLOCK_END.search(changed)
        ):
            return None
        starts = [m.start() for m in _ENTRY.finditer(changed)]
        if starts[:1] != [0]:
            return None
        lines = [changed[a:b] for a, b in zip(starts, [*starts[1:], len(changed)], strict=True)]
        if not all(yamlio.is_key_line(entry.partition("\n")[0]) for entry in lines):
            return None
        return _Cut(
            text,
            self.rest,
            self.start,
            self.end + shift,
            [*self.offsets[:first], *(low + a for a in starts), *(o + shift for o in self.offsets[last:])],
            [*self.entries[:first], *lines, *self.entries[last:]],
            lines,
            self.entries[first:last],
        )


class StackBlobs:
    """The versions of one stack file in one history, read and parsed on demand.

    Versions are mostly asked about one after the other, each mostly the one before: the entries
    of the last version read are kept by model (`_names`) and brought up to date with what
    changed, and each distinct entry is parsed once (`_parsed`).
    """

    def __init__(self, root: Path, stack: str, oldest_first: Sequence[str] = ()) -> None:
        self.stack = stack
        self._objects = gitutil.objects(root)
        # Asked about from the oldest on (a model's whole history), the versions are read one
        # after the other by a reader of their own that runs ahead (`gitutil.stream`), and what
        # changed from one to the next is kept in the repository's cache (`_Changelog`): the next
        # time, the versions it holds are not read, and the walk goes on from the newest of them.
        self._root = root
        self._all = list(oldest_first)
        self._changelog = _Changelog(root, stack_file(stack))
        self._cached = self._changelog.known(self._all)
        self._next = self._cached  # the version the walk reads next
        self._walking = True
        self._stream: Iterator[str | None] | None = None
        self._walked: list[tuple[str, bool, dict[str, str | None] | None]] = []
        self._tried: set[str] = set()
        self._seen: dict[str, dict[str, Release | None]] = {}
        self._checked: dict[str, bool] = {}
        self._parsed: dict[str, tuple[str, Release] | None] = {}
        self._last: _Cut | None = None
        # Of the last version read: model -> its entry's lines, how many entries each model
        # has, and how many entries do not validate.
        self._names: dict[str, str] = {}
        self._copies: Counter[str] = Counter()
        self._invalid = 0

    def release(self, blob: str, model: str) -> Release | None:
        """The model's release in the blob `blob` of the stack file; None where it has none or
        the file does not validate (an old commit may predate today's schema)."""
        if model not in self._tried:
            self._tried.add(model)
            self._from_changelog(model)
        seen = self._seen.setdefault(blob, {})
        if model in seen:
            return seen[model]
        walking = self._walking and self._next < len(self._all) and self._all[self._next] == blob
        if walking and self._stream is None and not self._start_walk():
            walking = False
        if walking:
            assert self._stream is not None
            text = next(self._stream)
            self._next += 1
        else:
            self._walking, self._stream = False, None
            text = self._objects.text(blob)
        before = dict(self._names) if walking else {}
        seen[model] = self._read(text, model) if text is not None else None
        if walking:
            self._note(blob, text is not None and self._valid(), before)
        return seen[model]

    def _from_changelog(self, model: str) -> None:
        """Fill in the model's release at the versions the cache holds."""
        timeline = self._changelog.timeline(self._all[: self._cached], model)
        for blob, entry in zip(self._all, timeline, strict=False):
            parsed = self._parse_entry(entry) if entry is not None else None
            self._seen.setdefault(blob, {})[model] = parsed[1] if parsed else None

    def _start_walk(self) -> bool:
        """Start reading the versions from `_next` on, from the state of the one before it
        (read from the cache); False where that state cannot be had."""
        if self._next:
            names = self._changelog.names(self._all[: self._next])
            text = self._objects.text(self._all[self._next - 1])
            cut = _cut(text) if text is not None else None
            if names is None or cut is None or sorted(cut.entries) != sorted(names.values()):
                return False
            self._last, self._names, self._invalid = cut, names, 0
            self._copies = Counter(dict.fromkeys(names, 1))
            self._checked[cut.rest] = True
        self._stream = gitutil.stream(self._root, self._all[self._next :])
        return True

    def _note(self, blob: str, valid: bool, before: dict[str, str]) -> None:
        """Keep what changed at this version of the walk; at the newest, save it to the cache."""
        if self._last is None:
            self._walked.append((blob, valid, None))  # read whole: the walk cannot be kept
        else:
            changed: dict[str, str | None] = {m: e for m, e in self._names.items() if before.get(m) != e}
            changed.update(dict.fromkeys(before.keys() - self._names.keys()))
            self._walked.append((blob, valid, changed))
        if self._next == len(self._all) and all(c is not None for *_, c in self._walked):
            previous = self._all[self._cached - 1] if self._cached else None
            self._changelog.save(self._walked, previous)

    def _valid(self) -> bool:
        if self._last is None:
            return False
        return (
            not self._invalid
            and self._checked.get(self._last.rest, False)
            and max(self._copies.values(), default=0) <= 1
        )

    def _parse_entry(self, entry: str) -> tuple[str, Release] | None:
        if entry not in self._parsed:
            self._parsed[entry] = _entry(entry)
        return self._parsed[entry]

    def _read(self, text: str, model: str) -> Release | None:
        cut = self._last.after(text) if self._last else None
        if cut is None:
            self._names, self._copies, self._invalid = {}, Counter(), 0
            self._last = cut = _cut(text)
            if cut is None:
                whole = self._whole(text)
                return whole.get(model) if whole is not None else None
        self._last = cut
        for gone in cut.removed:
            self._count(gone, -1)
        for new in cut.added:
            self._count(new, 1)
        if cut.rest not in self._checked:
            self._checked[cut.rest] = self._whole(cut.rest) is not None
        # An entry that does not validate, or a model named twice, makes the whole file invalid.
        if not self._valid():
            return None
        entry = self._names.get(model)
        parsed = self._parsed[entry] if entry is not None else None
        return parsed[1] if parsed else None

    def _name(self, entry: str) -> str:
        parsed = self._parsed[entry]
        return parsed[0] if parsed else ""

    def _count(self, entry: str, sign: int) -> None:
        """Add (1) or take away (-1) one entry of the last version read."""
        parsed = self._parse_entry(entry)
        if parsed is None:
            self._invalid += sign
            return
        name = parsed[0]
        self._copies[name] += sign
        if sign > 0:
            self._names[name] = entry
        elif self._copies[name] <= 0:
            del self._copies[name]
            self._names.pop(name, None)
        elif self._names.get(name) == entry:
            # Another entry of that name is left: find it.
            assert self._last is not None
            self._names[name] = next(e for e in self._last.entries if self._name(e) == name)

    def _whole(self, text: str) -> dict[str, Release] | None:
        try:
            return dict(parse_stack(text, self.stack).config.releases)
        except (UserError, UserErrors):
            return None


class _Changelog:
    """What changed in a stack file from one version to the next, kept in the repository's git
    directory (`modelctl/history/`, never committed) by blob id, so a model's history is read
    again without reading every version: the blobs of a history, each with the blob it follows,
    whether it validates, and the releases' lines that changed in it. Entries are kept as text and
    parsed when read, and the cache names the code that checked them (`_code`): another version
    of modelctl starts it anew. A cache that cannot be read or written is simply not used.
    """

    def __init__(self, root: Path, path: str) -> None:
        self._root = root
        self._path = path
        self._data: dict[str, Any] | None = None

    def _file(self) -> Path:
        git_dir = gitutil.git(self._root, "rev-parse", "--git-common-dir").strip()
        return self._root / git_dir / "modelctl" / "history" / f"{self._path}.json"

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            try:
                data = orjson.loads(self._file().read_bytes())
            except (OSError, orjson.JSONDecodeError, UserError):
                data = None
            ok = isinstance(data, dict) and data.get("code") == _code()
            self._data = data if ok else {"code": _code(), "entries": [], "blobs": {}}
        return self._data

    def known(self, oldest_first: Sequence[str]) -> int:
        """How many of the blobs, from the oldest, the cache holds, each after the one before."""
        blobs = self._load()["blobs"]
        previous = None
        for count, blob in enumerate(oldest_first):
            record = blobs.get(blob)
            if record is None or record[0] != previous:
                return count
            previous = blob
        return len(oldest_first)

    def timeline(self, oldest_first: Sequence[str], model: str) -> list[str | None]:
        """The model's entry lines at each of these blobs (all held: see `known`); None where it
        has no release or the file does not validate."""
        data = self._load()
        found: list[str | None] = []
        current: str | None = None
        for blob in oldest_first:
            _, valid, changed = data["blobs"][blob]
            if model in changed:
                current = data["entries"][changed[model]] if changed[model] is not None else None
            found.append(current if valid else None)
        return found

    def names(self, oldest_first: Sequence[str]) -> dict[str, str] | None:
        """Model -> entry lines at the last of these blobs (all held), or None if it is invalid."""
        data = self._load()
        names: dict[str, str | None] = {}
        for blob in oldest_first:
            names.update(data["blobs"][blob][2])
        if not data["blobs"][oldest_first[-1]][1]:
            return None
        return {model: data["entries"][index] for model, index in names.items() if index is not None}

    def save(
        self, walked: Sequence[tuple[str, bool, dict[str, str | None] | None]], previous: str | None
    ) -> None:
        """Keep the walk's blobs, the first following `previous`, each the one before."""
        data = self._load()
        entries: list[str] = data["entries"]
        index = {entry: i for i, entry in enumerate(entries)}
        for blob, valid, changed in walked:
            ids = {}
            for model, entry in (changed or {}).items():
                if entry is not None and entry not in index:
                    index[entry] = len(entries)
                    entries.append(entry)
                ids[model] = index[entry] if entry is not None else None
            data["blobs"][blob] = [previous, valid, ids]
            previous = blob
        try:
            file = self._file()
            file.parent.mkdir(parents=True, exist_ok=True)
            yamlio.write_atomic(file, orjson.dumps(data).decode())
        except (OSError, UserError):
            pass  # a read-only repository reads its history the long way


@cache
def _code() -> str:
    """The code that reads and checks stack files, as the changelog's cache names it."""
    digest = hashlib.sha256()
    for module in (schema, state, credentials, yamlio, sys.modules[__name__]):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def _cut(text: str) -> _Cut | None:
    """The file cut into the rest and its entries, or None where the entries cannot be cut out
    for sure (see `yamlio.edit_block`)."""
    span = yamlio.block_span(text, _PATH)
    if span is None:
        return None
    start, end = span
    key_end = text.find("\n", start, end) + 1 or end
    offsets = [m.start() for m in _ENTRY.finditer(text, key_end, end)]
    before_first = text[key_end : offsets[0] if offsets else end]
    if any(line.strip() and not line.lstrip().startswith("#") for line in before_first.splitlines()):
        return None
    entries = [text[a:b] for a, b in zip(offsets, [*offsets[1:], end], strict=True)]
    if not all(yamlio.is_key_line(entry.partition("\n")[0]) for entry in entries):
        return None
    rest = f"{text[:start]}  {_RELEASES}: {{}}\n{text[end:]}"
    return _Cut(text, rest, key_end, end, offsets, entries, entries, [])


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of `a` and `b` (slices compared at C speed)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: str, b: str) -> int:
    """The length of the longest common suffix of `a` and `b`."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle : len(a) - low] == b[len(b) - middle : len(b) - low]:
            low = middle
        else:
            high = middle - 1
    return low


def _entry(lines: str) -> tuple[str, Release] | None:
    """(model, release) in one entry's lines, checked as `parse_stack` checks it; None if invalid."""
    try:
        doc = yamlio.read(f"config:\n  {_RELEASES}:\n{lines}")
        releases = doc["config"][_RELEASES]
        if (
            not isinstance(releases, dict)
            or len(releases) != 1
            or any(True for _ in find_credentials(releases))
        ):
            return None
        ((model, release),) = _ENTRIES.validate_python(releases).items()
        return model, release
    except (yamlio.Unsure, ValidationError, TypeError, KeyError):
        return None


@dataclass(frozen=True)
class StackChange:
    """One commit that changed a stack file, and the stack's releases as they stood after it.

    `date` is when it took effect on the branch: its committer date, or the commit before it's
    when that is later (`committed` is the date as recorded).
    """

    commit: str
    author: str
    date: datetime
    subject: str
    # The file's blob at this commit: None where the commit deleted it.
    blob: str | None = None
    blobs: StackBlobs | None = field(default=None, repr=False, compare=False)
    committed: datetime | None = None

    def release(self, model: str) -> Release | None:
        """The model's release; None where it has none, or where the file was deleted or does
        not validate at this commit."""
        return self.blobs.release(self.blob, model) if self.blobs and self.blob else None


# Whether a history (newest first) holds what a decision needs.
Enough = Callable[[list["StackChange"]], bool]


def stack_history(
    root: Path, stack: str, rev: str = "HEAD", enough: Enough | None = None
) -> list[StackChange]:
    """Every commit reachable from `rev` (first parents) that touched the stack file, newest
    first; each change reads its file when first asked (`StackChange.release`).

    In a shallow clone whose oldest fetched commit holds the file (so its history is cut),
    history is fetched deeper (doubling) until `enough(history)` holds, or, without `enough`,
    until the file's whole history is there.

    Raises
    ------
    UserError
        The clone is shallow and deepening it failed.
    """
    while True:
        history = _read(root, stack, rev)
        boundary = gitutil.shallow_commits(root)
        if not (history and history[-1].commit in boundary) or (enough is not None and enough(history)):
            return history
        gitutil.deepen(root, max(len(_dates(root, rev)), 50))


def covers(
    history: Sequence[StackChange],
    model: str,
    holds: Callable[[Release | None], bool],
    back_to: datetime | None = None,
) -> bool:
    """Whether `history` (newest first) shows where the current run of `model`'s release
    satisfying `holds` began (a change before it does not satisfy it), or reaches back to
    `back_to`: an `Enough` for `stack_history`."""
    run = list(itertools.takewhile(lambda change: holds(change.release(model)), history))
    return len(run) < len(history) or (back_to is not None and bool(history) and history[-1].date <= back_to)


def _read(root: Path, stack: str, rev: str) -> list[StackChange]:
    path = stack_file(stack)
    effective = _dates(root, rev)
    out = gitutil.git(
        root,
        "log",
        "--first-parent",
        "--diff-merges=first-parent",
        "--raw",
        "--no-abbrev",
        f"--format={_RECORD}%H{_FIELD}%an <%ae>{_FIELD}%cI{_FIELD}%s",
        rev,
        "--",
        path,
    )
    found = []
    for record in out.split(_RECORD)[1:]:
        meta, _, raw = record.partition("\n")
        commit, author, date, subject = meta.split(_FIELD)
        committed = datetime.fromisoformat(date)
        found.append((commit, author, effective.get(commit, committed), subject, _blob(raw), committed))
    oldest_first = list(dict.fromkeys(blob for *_, blob, _ in reversed(found) if blob))
    blobs = StackBlobs(root, stack, oldest_first)
    return [StackChange(c, a, d, s, blob, blobs, committed) for c, a, d, s, blob, committed in found]


def _dates(root: Path, rev: str) -> dict[str, datetime]:
    """Each first-parent commit of `rev`: the latest committer date of it and the commits before it."""
    lines = gitutil.git(root, "log", "--first-parent", "--format=%H %cI", rev).split("\n")
    dates: dict[str, datetime] = {}
    latest: datetime | None = None
    for line in reversed([line for line in lines if line]):
        commit, date = line.split(" ", 1)
        committed = datetime.fromisoformat(date)
        latest = committed if latest is None or committed > latest else latest
        dates[commit] = latest
    return dates


def _blob(raw: str) -> str | None:
    """The new blob of the file in a commit's `--raw` line (None: deleted)."""
    for line in raw.splitlines():
        if line.startswith(":"):
            new = line.split()[3]
            return None if set(new) == {"0"} else new
    return None


def release_changes(history: Sequence[StackChange], model: str) -> list[StackChange]:
    """The changes (newest first) where the model's release differs from the one before it."""
    changes = []
    previous: Release | None = None
    for change in reversed(history):
        release = change.release(model)
        if release != previous:
            changes.append(change)
        previous = release
    return list(reversed(changes))


def snapshot_at(history: Sequence[StackChange], when: datetime) -> StackChange | None:
    """The stack as it stood at `when`: the change committed newest at or before it."""
    return next((s for s in history if s.date <= when), None)


def releases_by_date(history: Sequence[StackChange], model: str) -> list[tuple[datetime, Release | None]]:
    """(commit date, the model's release) of each change, newest first."""
    # Read from the oldest on: one walk through the versions, kept in the cache (`StackBlobs`).
    releases = [s.release(model) for s in reversed(history)]
    return list(zip((s.date for s in history), reversed(releases), strict=True))
