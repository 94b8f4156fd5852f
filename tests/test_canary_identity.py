"""Who is the canary comes from the release record (`rollback_to`, the stable version it started
from), never from version order or weights: `promote`, `canary analyze`'s arms, `status`, the
judge's snapshot, the alert rules and the dashboard agree at every weight, 50% included, whatever
the versions' numbers (an older version canaried against a newer stable too), and for A/B
experiments' control and treatment alike."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.alert_rules import alert_rules
from infra.common import ModelTarget
from infra.dashboard import dashboard
from modelctl.cli.release import describe, release_data
from modelctl.core import releases
from modelctl.core.analysis.experiment import ab_arms
from modelctl.core.analysis.snapshot import canary_arms
from modelctl.core.releases import Target
from modelctl.core.schema import Release
from modelctl.core.state import parse_model, parse_stack
from tests.factories import model_doc, stack_doc

MODEL = "fraud-detection"
POOL = ("v0.9.0", "v1.0.0", "v1.0.1", "v1.1.0", "v2.0.0", "v10.0.0")
MODEL_FILE = parse_model(yaml.safe_dump(model_doc(versions=POOL)), f"models/{MODEL}/model.yaml")


@st.composite
def splits(draw: st.DrawFn, *, most: int = 50) -> tuple[str, str, dict[str, int]]:
    """(stable, candidate, traffic): two distinct versions in either order of number and of
    listing, the candidate's weight from 1 to `most`."""
    stable, candidate = draw(st.lists(st.sampled_from(POOL), min_size=2, max_size=2, unique=True))
    weight = draw(st.integers(1, most))
    order = draw(st.permutations([(stable, 100 - weight), (candidate, weight)]))
    return stable, candidate, dict(order)


def staging(release: dict[str, Any]) -> Any:
    doc = stack_doc({})
    doc["config"]["modelctl:releases"][MODEL] = release
    return parse_stack(yaml.safe_dump(doc), "staging")


@settings(max_examples=60, deadline=None)
@given(splits())
def test_every_reader_names_the_recorded_stable_and_its_canary(
    split: tuple[str, str, dict[str, int]],
) -> None:
    stable, canary, traffic = split
    release = Release.model_validate({"traffic": traffic, "rollback_to": stable})
    assert releases.canary_split(release) == (stable, canary)
    # canary analyze and the judge: the snapshot's arms.
    arms = canary_arms(release)
    assert arms is not None
    assert (arms.baseline, arms.canary) == (stable, canary)
    assert (arms.baseline_weight, arms.canary_weight) == (traffic[stable], traffic[canary])
    # status, in text and in --json.
    assert describe(release).endswith(f"; canary {canary} from {stable}")
    assert release_data(release)["split"] == {"kind": "canary", "stable": stable, "candidate": canary}
    # promote takes the canary to 100% and keeps the stable for a rollback.
    promoted = releases.promote(Target(MODEL_FILE, "staging"), release).release
    assert dict(promoted.traffic) == {stable: 0, canary: 100}
    assert promoted.rollback_to == stable
    # The alert rules compare the canary with the stable; the dashboard says who is who.
    stack = staging({"traffic": traffic, "rollback_to": stable})
    target = ModelTarget(stack, MODEL_FILE, stack.config.releases[MODEL])
    assert (target.stable(), target.canaries()) == (stable, [canary])
    [worse] = [r for r in alert_rules(target) if r["alert"] == "ModelCanaryWorseThanStable"]
    assert worse["labels"]["version"] == canary
    assert (
        f"canary {canary} is worse than stable {stable}" == worse["annotations"]["summary"].split(" ", 1)[1]
    )
    [panel] = [p for p in dashboard(stack)["panels"] if p["type"] == "text"]
    assert f"| {MODEL} | " in panel["options"]["content"]
    assert f"| canary {canary} from {stable} |" in panel["options"]["content"]


@settings(max_examples=40, deadline=None)
@given(splits(most=99))
def test_an_experiments_control_is_the_version_the_split_started_from(
    split: tuple[str, str, dict[str, int]],
) -> None:
    control, treatment, traffic = split
    release = Release.model_validate(
        {"traffic": traffic, "rollback_to": control, "experiment": {"metric": "accuracy"}}
    )
    assert ab_arms(release) == (control, treatment)
    assert canary_arms(release) is None  # never judged as a canary
    assert describe(release).endswith(f"; experiment {treatment} from {control}")
    assert releases.promote(Target(MODEL_FILE, "staging"), release).release.traffic[treatment] == 100


@settings(max_examples=30, deadline=None)
@given(splits(most=99))
def test_without_a_record_the_heavier_version_is_stable_and_the_older_on_a_tie(
    split: tuple[str, str, dict[str, int]],
) -> None:
    """A stack file written before `rollback_to` was recorded: the only rule left is the weights."""
    first, second, traffic = split
    release = Release.model_validate({"traffic": traffic})
    heavier = max(traffic, key=lambda v: (traffic[v], -POOL.index(v)))
    assert releases.stable_version(release) == heavier
    assert releases.split_roles(release) == (heavier, first if heavier == second else second)


def test_the_dashboard_lists_each_release_as_the_stack_file_records_it() -> None:
    stack = staging({"traffic": {"v2.0.0": 50, "v1.0.0": 50}, "rollback_to": "v2.0.0"})
    [panel] = [p for p in dashboard(stack)["panels"] if p["type"] == "text"]
    assert panel["options"]["content"].splitlines()[-1] == (
        f"| {MODEL} | v1.0.0 50%, v2.0.0 50% | canary v1.0.0 from v2.0.0 |"
    )
    json.dumps(panel)  # a ConfigMap holds it as JSON
