"""Release edits keep every comment of the stack file where it was, whatever key comes or goes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from modelctl.core import releases, yamlio
from modelctl.core.releases import Proposal, Target
from modelctl.core.schema import ModelFile, Release
from modelctl.core.state import parse_stack
from tests.factories import model_doc

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MODEL = "fraud-detection"
# A comment above, beside and below every kind of key: the file's own, the environment's, a
# release's traffic fields and the fields the commands never touch, in block and flow style.
TEXT = """\
# top of the stack file
config:
  # above modelctl:environment
  modelctl:environment:  # beside modelctl:environment
    namespace: models-staging  # beside namespace
    image: ghcr.io/acme/serving:1
    dvc_remote: s3://bucket/dvc
    # below dvc_remote
  # above modelctl:releases
  modelctl:releases:  # beside modelctl:releases
    # above fraud-detection
    fraud-detection:  # beside fraud-detection
      # above traffic
      traffic:  # beside traffic
        # above v1.0.0
        v1.0.0: 100  # beside v1.0.0
        # below v1.0.0
      # above sticky
      sticky:  # beside sticky
        # above cookie
        cookie: fraud  # beside cookie
        # below cookie
      # above overrides
      overrides:  # beside overrides
        beta: v1.0.0  # beside beta
      # above replicas
      replicas: {min: 3, max: 6}  # beside replicas
      # above analysis
      analysis:  # beside analysis
        # above steps
        steps: [10, 25, 50]  # beside steps
        # below steps
      # below analysis
    # above churn
    churn:  # beside churn
      traffic:
        v2.0.0: 100  # beside v2.0.0
# end of the file
"""

Step = Callable[[Target, Release], Proposal]
STEPS: list[tuple[str, Step]] = [
    ("canary", lambda t, r: releases.canary(t, r, "v1.1.0")),
    ("canary step", lambda t, r: releases.canary(t, r, "v1.1.0")),
    ("shadow", lambda t, r: releases.shadow(t, r, "v1.2.0", 5)),
    ("promote", releases.promote),
    ("rollback", lambda t, r: releases.rollback(t, r, NOW, reason="INC-1")),
    ("clear hold", lambda t, r: releases.clear_hold(t, r, "v1.1.0", "fixed")),
    ("clear the other hold", lambda t, r: releases.clear_hold(t, r, "v1.2.0", "fixed")),
    (
        "ab",
        lambda t, r: releases.ab(
            t, r, {"v1.0.0": 50, "v1.1.0": 50}, True, {"metric": "accuracy", "effect": 0.02}
        ),
    ),
    ("shadow again", lambda t, r: releases.shadow(t, r, "v1.2.0", 10)),
    ("shadow off", releases.shadow_off),
    ("rollback again", lambda t, r: releases.rollback(t, r, NOW)),
    ("bluegreen", lambda t, r: releases.bluegreen(t, r, "v1.2.0", 20)),
    ("switch", releases.bluegreen_switch),
]


def comments(text: str) -> list[str]:
    return [m[1] for m in re.finditer(r"# (.+)$", text, re.MULTILINE)]


def key_of(line: str) -> str:
    found = re.match(r"\s*([^\s#]+?):(\s|$)", line)
    assert found, line
    return found[1]


def check_in_place(text: str, gone: set[str]) -> None:
    """Every comment of a key that was never removed is where it was: beside its key, directly
    above it, in the original order; nothing is duplicated or invented."""
    original = comments(TEXT)
    now = comments(text)
    assert now == [c for c in original if c in now], "order changed or comments duplicated/invented"
    wanted = [c for c in original if c.split(" ", 1)[1] not in gone]
    assert [c for c in wanted if c not in now] == []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        beside = re.search(r"\S.*# beside (\S+)$", line)
        if beside:
            assert key_of(line) == beside[1], line
        above = re.fullmatch(r"\s*# above (\S+)", line)
        if above and above[1] not in gone:
            following = next(x for x in lines[index + 1 :] if not x.strip().startswith("#"))
            assert key_of(following) == above[1], (line, following)


def test_release_edits_keep_every_comment_where_it_was() -> None:
    target = Target(ModelFile.model_validate(model_doc(versions=("v1.0.0", "v1.1.0", "v1.2.0"))), "staging")
    text = TEXT
    gone: set[str] = set()
    for name, step in STEPS:
        before = parse_stack(text, "staging").config.releases[MODEL]
        after = step(target, before).release
        text = releases.edit_stack_text(text, "staging", MODEL, before, after)
        assert parse_stack(text, "staging").config.releases[MODEL] == after, name
        removed = {"sticky": after.sticky is None and before.sticky is not None}
        removed |= {v: v in before.traffic and v not in after.traffic for v in before.traffic}
        gone |= {key for key, was in removed.items() if was}
        if "sticky" in gone:
            gone |= {"cookie"}
        check_in_place(text, gone)
    assert text.startswith("# top of the stack file\nconfig:\n  # above modelctl:environment\n")
    assert text.endswith("        v2.0.0: 100  # beside v2.0.0\n# end of the file\n")


@pytest.mark.parametrize("model", [MODEL, "churn"])
def test_editing_only_the_release_lines_writes_what_the_whole_document_round_trip_writes(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release command reads and writes again only its release's lines (the file's first
    entry, or its last, with the end-of-file comment the round trip attaches to it); the file
    must come out as the round trip of the whole document writes it."""
    record = model_doc(model, versions=("v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0"))
    target = Target(ModelFile.model_validate(record), "staging")
    text = TEXT
    # churn starts on v2.0.0, so the blue-green switch finds no newer version to switch to.
    for name, step in STEPS if model == MODEL else STEPS[:-1]:
        before = parse_stack(text, "staging").config.releases[model]
        after = step(target, before).release
        assert yamlio.block_span(text, ("config", "modelctl:releases", model)), "the lines were cut out"
        cut = releases.edit_stack_text(text, "staging", model, before, after)
        with monkeypatch.context() as whole:
            whole.setattr(yamlio, "block_span", lambda *_: None)
            assert releases.edit_stack_text(text, "staging", model, before, after) == cut, name
        assert parse_stack(cut, "staging").config.releases[model] == after, name
        text = cut
    assert text != TEXT
