"""The fast reader gives what the round trip gives, or says it is unsure: never another value."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest

from modelctl.core import yamlio

ROOT = Path(__file__).resolve().parents[1]
SCALARS = [
    *("yes", "no", "on", "off", "y", "n", "~", "null", "Null", "NULL", "", "True", "TRUE", "tRue", "false"),
    *(
        "1e3",
        "1.0e+3",
        "1E3",
        "12e03",
        ".inf",
        "-.Inf",
        "+.INF",
        ".NaN",
        "1:30",
        "190:20:30",
        "+12",
        "-0",
        "0",
    ),
    *("0.", ".5", "1.", "-.5", "+.5e+3", "1.0", "10.50", "3.", '"3"', "'x'", "! 12", ".", "..", "+", "1.2.3"),
    *("v1.0.0", "2026-11-01", "2026-11-01T12:00:00Z", "2026-11-01 12:00:00.5 +02:00", "2026-11-01T12:00:00"),
    *("2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2026-1-1 1:00:00", "12:00", "a: b"),
    *("1_000", "0o17", "017", "00", "0x1F", "0b101", "1_0.5", "=", "<<", "!!str 1", "&a 1", "2026-13-45"),
    *("|\n  two\n  lines", ">\n  folded\n  text", '"esc\\taped \\u00e9"', "[1, {a: b}]", "{x: [1, 2]}"),
]


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def same(fast: Any, precise: Any) -> bool:
    """Equal values of the same kind; times with the same offset and zone name."""
    kinds = (bool, int, float, str, dt.datetime, dt.date, type(None), dict, list)
    kind = next(k for k in kinds if isinstance(precise, k))
    if not isinstance(fast, kind) or (kind is int and isinstance(fast, bool)):
        return False
    if isinstance(fast, dict):
        return list(fast) == list(precise) and all(same(fast[k], precise[k]) for k in fast)
    if isinstance(fast, list):
        return len(fast) == len(precise) and all(same(a, b) for a, b in zip(fast, precise, strict=True))
    if isinstance(fast, float) and math.isnan(fast):
        return math.isnan(float(precise))
    if isinstance(fast, dt.datetime):
        return bool(
            fast == precise and fast.tzname() == precise.tzname() and fast.utcoffset() == precise.utcoffset()
        )
    return bool(fast == precise)


@pytest.mark.parametrize("scalar", SCALARS)
def test_a_value_reads_as_the_round_trip_reads_it(scalar: str) -> None:
    first_line = (scalar.splitlines() or [""])[0]
    text = f"key: {scalar}\nlist:\n  - {first_line}\n"
    try:
        fast = yamlio.read(text)
    except yamlio.Unsure:
        return  # the caller reads it with the round trip
    assert same(fast, plain(yamlio.loads(text, "x.yaml"))), scalar


@pytest.mark.parametrize(
    "path",
    sorted(
        p.relative_to(ROOT)
        for p in ROOT.glob("**/*.y*ml")
        if ".venv" not in p.parts and "node_modules" not in p.parts
    ),
)
def test_every_yaml_file_of_the_repository_reads_as_the_round_trip_reads_it(path: Path) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    assert same(yamlio.read(text), plain(yamlio.loads(text, str(path))))


@pytest.mark.parametrize(
    "text",
    ["a: 1\na: 2\n", "%YAML 1.1\n---\na: yes\n", "a: &x [1]\nb: *x\n", "a: !!binary aGk=\n", "<<: {a: 1}\n"],
)
def test_what_only_the_round_trip_reads_for_sure_is_left_to_it(text: str) -> None:
    with pytest.raises(yamlio.Unsure):
        yamlio.read(text)
