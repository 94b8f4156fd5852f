"""Release transitions on data alone: what each command makes of a release, and what it refuses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelctl.core import releases, yamlio
from modelctl.core.errors import UserError
from modelctl.core.releases import Target
from modelctl.core.schema import ModelFile, Release, Requires
from tests.factories import model_doc, stack_doc

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def target(stack: str = "staging", **statuses: str) -> Target:
    doc = model_doc(versions=("v1.0.0", "v1.1.0", "v1.2.0"))
    for version, status in statuses.items():
        doc["versions"][version.replace("_", ".")]["status"] = status
    return Target(ModelFile.model_validate(doc), stack)


def release(traffic: dict[str, int], **extra: Any) -> Release:
    return Release.model_validate({"traffic": traffic, **extra})


def refusal(call: Any) -> str:
    with pytest.raises(UserError) as caught:
        call()
    return str(caught.value)


def test_stable_is_the_heaviest_version_and_the_older_on_a_tie() -> None:
    assert releases.stable_version(release({"v1.0.0": 10, "v1.1.0": 90})) == "v1.1.0"
    assert releases.stable_version(release({"v1.1.0": 50, "v1.0.0": 50})) == "v1.0.0"


def test_canary_walks_the_analysis_steps_then_asks_for_promote() -> None:
    current = release({"v1.0.0": 100})
    seen = []
    for _ in range(4):
        current = releases.canary(target(), current, "v1.1.0").release
        seen.append(current.traffic["v1.1.0"])
    assert seen == [5, 10, 25, 50]
    assert current.traffic == {"v1.0.0": 50, "v1.1.0": 50}
    assert "promote" in refusal(lambda: releases.canary(target(), current, "v1.1.0"))


def test_canary_steps_come_from_the_stack_analysis_settings() -> None:
    current = release({"v1.0.0": 100}, analysis={"steps": [20, 40]})
    assert releases.canary(target(), current, "v1.1.0").release.traffic["v1.1.0"] == 20


def test_canary_message_names_model_stack_versions_and_weights() -> None:
    proposal = releases.canary(target(), release({"v1.0.0": 100}), "v1.1.0", weight=10)
    assert proposal.message == "canary: fraud-detection v1.1.0 at 10% on staging (v1.0.0 90%)"


@pytest.mark.parametrize("weight", [0, 100, -5, 150])
def test_canary_weight_must_be_1_to_99(weight: int) -> None:
    assert "outside 1-99" in refusal(
        lambda: releases.canary(target(), release({"v1.0.0": 100}), "v1.1.0", weight)
    )


def test_canary_needs_exactly_one_stable_version() -> None:
    experiment = release({"v1.0.0": 50, "v1.1.0": 50})
    assert "a canary needs one stable version" in refusal(
        lambda: releases.canary(target(), experiment, "v1.2.0")
    )
    assert "already takes all traffic" in refusal(
        lambda: releases.canary(target(), release({"v1.1.0": 100}), "v1.1.0")
    )


def test_unknown_and_revoked_versions_are_refused() -> None:
    stable = release({"v1.0.0": 100})
    assert "v9.9.9 of fraud-detection is not registered" in refusal(
        lambda: releases.canary(target(), stable, "v9.9.9")
    )
    revoked = target(v1_1_0="revoked")
    assert "v1.1.0 of fraud-detection is revoked" in refusal(
        lambda: releases.canary(revoked, stable, "v1.1.0")
    )


def test_a_deprecated_version_may_not_gain_traffic_but_may_lose_it() -> None:
    deprecated = target(v1_0_0="deprecated")
    before = release({"v1.0.0": 50, "v1.1.0": 50})
    releases.require_may_gain(deprecated, before, release({"v1.0.0": 10, "v1.1.0": 90}))
    assert "deprecated and cannot gain traffic" in refusal(
        lambda: releases.require_may_gain(deprecated, before, release({"v1.0.0": 60, "v1.1.0": 40}))
    )


def test_promote_keeps_only_the_previous_stable_at_zero() -> None:
    canary = release({"v1.1.0": 90, "v1.2.0": 10, "v1.0.0": 0})
    promoted = releases.promote(target(), canary).release
    assert promoted.traffic == {"v1.1.0": 0, "v1.2.0": 100}
    restarted = releases.canary(target(), release({"v1.1.0": 100, "v1.0.0": 0}), "v1.2.0").release
    assert restarted.traffic == {"v1.1.0": 95, "v1.0.0": 0, "v1.2.0": 5}


def test_promote_without_a_canary_is_refused() -> None:
    assert "promote needs a canary" in refusal(lambda: releases.promote(target(), release({"v1.0.0": 100})))


def test_promote_drops_stickiness_and_a_shadow_never_mirrors_a_serving_version() -> None:
    canary = release({"v1.0.0": 90, "v1.1.0": 10}, sticky={})
    promoted = releases.promote(target(), canary).release
    assert (promoted.shadow, promoted.sticky) == (None, None)
    # What `modelctl shadow` refuses, a hand edit may not write either.
    with pytest.raises(ValueError, match=r"shadow v1\.1\.0 already serves live traffic \(10%\)"):
        release({"v1.0.0": 90, "v1.1.0": 10}, shadow={"version": "v1.1.0", "percent": 20})


def test_parse_split() -> None:
    assert releases.parse_split("v1.0.0=50, v1.1.0=50") == {"v1.0.0": 50, "v1.1.0": 50}
    for bad in ["v1.0.0", "v1.0.0=x", "v1.0.0=50,v1.0.0=50"]:
        assert "VERSION=WEIGHT" in refusal(lambda bad=bad: releases.parse_split(bad))


# An A/B experiment's question: its metric and the smallest effect worth detecting.
EXPERIMENT = {"metric": "accuracy", "effect": 0.02}


def test_ab_split_sticky_and_previous_stable_kept_warm() -> None:
    proposal = releases.ab(target(), release({"v1.0.0": 100}), {"v1.1.0": 50, "v1.2.0": 50}, True, EXPERIMENT)
    assert proposal.release.traffic == {"v1.0.0": 0, "v1.1.0": 50, "v1.2.0": 50}
    assert proposal.release.sticky is not None
    assert proposal.release.sticky.cookie == "model-version"
    for bad in [{"v1.0.0": 100}, {"v1.0.0": 60, "v1.1.0": 60}, {"v1.0.0": 100, "v1.1.0": 0}]:
        assert "not an A/B split" in refusal(
            lambda bad=bad: releases.ab(target(), release({"v1.0.0": 100}), bad, sticky=False)
        )


def test_shadow_on_and_off() -> None:
    stable = release({"v1.0.0": 100})
    mirrored = releases.shadow(target(), stable, "v1.1.0", 12.5).release
    assert mirrored.shadow is not None
    assert (mirrored.shadow.version, mirrored.shadow.percent) == ("v1.1.0", 12.5)
    assert mirrored.traffic == stable.traffic
    assert releases.shadow_off(target(), mirrored).release.shadow is None
    assert "no shadow" in refusal(lambda: releases.shadow_off(target(), stable))
    assert "already serves live traffic" in refusal(lambda: releases.shadow(target(), stable, "v1.0.0", 5))


def test_bluegreen_deploys_at_zero_then_switches_in_one_step() -> None:
    stable = release({"v1.0.0": 100})
    deployed = releases.bluegreen(target(), stable, "v1.1.0", mirror=10).release
    assert deployed.traffic == {"v1.0.0": 100, "v1.1.0": 0}
    assert deployed.shadow is not None
    assert deployed.shadow.version == "v1.1.0"
    switched = releases.bluegreen_switch(target(), deployed).release
    assert switched.traffic == {"v1.0.0": 0, "v1.1.0": 100}
    assert switched.shadow is None
    assert "no version newer than v1.0.0" in refusal(lambda: releases.bluegreen_switch(target(), stable))


def test_every_release_records_the_stable_version_it_started_from() -> None:
    stable = release({"v1.0.0": 100})
    started = [
        releases.canary(target(), stable, "v1.1.0").release,
        releases.ab(target(), stable, {"v1.0.0": 50, "v1.1.0": 50}, False, EXPERIMENT).release,
        releases.ab(target(), stable, {"v1.1.0": 50, "v1.2.0": 50}, True, EXPERIMENT).release,
        releases.shadow(target(), stable, "v1.1.0", 10).release,
        releases.bluegreen(target(), stable, "v1.1.0").release,
    ]
    assert [r.rollback_to for r in started] == ["v1.0.0"] * 5
    assert releases.promote(target(), started[0]).release.rollback_to == "v1.0.0"
    assert releases.bluegreen_switch(target(), started[4]).release.rollback_to == "v1.0.0"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ({"traffic": {"v1.0.0": 90, "v1.1.0": 10}, "rollback_to": "v1.0.0"}, "v1.0.0"),
        ({"traffic": {"v1.0.0": 0, "v1.1.0": 100}, "rollback_to": "v1.0.0"}, "v1.0.0"),
        ({"traffic": {"v1.0.0": 50, "v1.1.0": 25, "v1.2.0": 25}, "rollback_to": "v1.0.0"}, "v1.0.0"),
        ({"traffic": {"v1.0.0": 100}, "shadow": {"version": "v1.1.0", "percent": 5}}, "v1.0.0"),
        ({"traffic": {"v1.0.0": 100, "v1.1.0": 0}, "rollback_to": "v1.0.0"}, "v1.0.0"),
        # Stack files written before rollback_to: the state alone still says where to go.
        ({"traffic": {"v1.0.0": 90, "v1.1.0": 10}}, "v1.0.0"),
        ({"traffic": {"v1.0.0": 0, "v1.1.0": 100}}, "v1.0.0"),
        ({"traffic": {"v1.1.0": 0, "v1.2.0": 95, "v1.0.0": 5}}, "v1.2.0"),
    ],
    ids=["canary", "promoted", "ab", "shadow", "bluegreen", "old-canary", "old-promoted", "old-split"],
)
def test_rollback_goes_to_the_stable_version_without_any_history(now: dict[str, Any], expected: str) -> None:
    proposal = releases.rollback(target(), release(**now), NOW, reason="INC-42")
    assert proposal.release.traffic == {expected: 100}
    assert proposal.release.shadow is None
    assert proposal.release.sticky is None
    assert proposal.release.rollback_to is None
    assert proposal.release.held
    assert expected not in proposal.release.held
    assert all(h.reason == "INC-42" and h.since == NOW for h in proposal.release.held.values())
    assert proposal.restores


def test_rollback_holds_what_it_moved_away_from_not_the_warm_predecessor() -> None:
    current = release({"v1.0.0": 0, "v1.1.0": 95, "v1.2.0": 5}, rollback_to="v1.1.0")
    proposal = releases.rollback(target(), current, NOW)
    assert proposal.release.traffic == {"v1.1.0": 100}
    assert list(proposal.release.held) == ["v1.2.0"]
    assert proposal.release.held["v1.2.0"].reason == "rolled back to v1.1.0"
    assert proposal.message == "rollback: fraud-detection to v1.1.0 100% on staging, holding v1.2.0"


def test_a_second_rollback_is_a_no_op_that_says_so() -> None:
    first = releases.rollback(target(), release({"v1.0.0": 0, "v1.1.0": 100}, rollback_to="v1.0.0"), NOW)
    second = releases.rollback(target(), first.release, NOW + timedelta(minutes=1))
    assert second.idempotent
    assert second.release == first.release
    assert "already fully on v1.0.0" in second.summary
    assert "v1.1.0 held" in second.summary


def test_rollback_drops_header_overrides_to_held_versions() -> None:
    current = release(
        {"v1.0.0": 90, "v1.1.0": 10}, rollback_to="v1.0.0", overrides={"beta": "v1.1.0", "old": "v1.0.0"}
    )
    assert releases.rollback(target(), current, NOW).release.overrides == {"old": "v1.0.0"}


def test_held_versions_get_no_traffic_from_any_release_until_cleared() -> None:
    held = releases.rollback(target(), release({"v1.0.0": 90, "v1.1.0": 10}), NOW).release
    attempts = [
        lambda: releases.canary(target(), held, "v1.1.0"),
        lambda: releases.ab(target(), held, {"v1.0.0": 50, "v1.1.0": 50}, sticky=False),
        lambda: releases.shadow(target(), held, "v1.1.0", 5),
        lambda: releases.bluegreen(target(), held, "v1.1.0"),
        lambda: releases.rollback(target(), held, NOW, to="v1.1.0"),
    ]
    for attempt in attempts:
        assert "v1.1.0 of fraud-detection is held on staging" in refusal(attempt)
        assert "modelctl release-hold clear fraud-detection v1.1.0 --stack staging --reason" in refusal(
            attempt
        )
    cleared = releases.clear_hold(target(), held, "v1.1.0", "fixed in v1.1.0's data").release
    assert cleared.held == {}
    assert releases.canary(target(), cleared, "v1.1.0").release.traffic == {"v1.0.0": 95, "v1.1.0": 5}
    assert releases.clear_hold(target(), cleared, "v1.1.0", "again").idempotent
    assert "needs a reason" in refusal(lambda: releases.clear_hold(target(), held, "v1.1.0", " "))
    assert "version v9.9.9 of fraud-detection is not registered" in refusal(
        lambda: releases.clear_hold(target(), held, "v9.9.9", "typo")
    ), "a mistyped version is an error, not 'nothing to clear'"


def test_a_hand_edit_giving_a_held_version_traffic_is_invalid() -> None:
    hold = {"v1.1.0": {"reason": "INC-1", "since": "2026-11-01T00:00:00Z"}}
    edits: list[dict[str, Any]] = [
        {"traffic": {"v1.0.0": 90, "v1.1.0": 10}},
        {"traffic": {"v1.0.0": 100}, "shadow": {"version": "v1.1.0", "percent": 5}},
        {"traffic": {"v1.0.0": 100}, "overrides": {"beta": "v1.1.0"}},
        {"traffic": {"v1.0.0": 0, "v1.1.0": 100}, "rollback_to": "v1.1.0"},
    ]
    for edit in edits:
        with pytest.raises(ValueError, match=r"v1\.1\.0 is held"):
            release(**edit, held=hold)
    with pytest.raises(ValueError, match=r"rollback_to v1\.2\.0 is not deployed"):
        release({"v1.0.0": 100}, rollback_to="v1.2.0")


def test_rollback_to_a_named_version_and_its_refusals() -> None:
    promoted = release({"v1.1.0": 100, "v1.0.0": 0}, rollback_to="v1.0.0")
    assert releases.rollback(target(), promoted, NOW, to="v1.2.0").release.traffic == {"v1.2.0": 100}
    assert "v1.0.0 of fraud-detection is revoked" in refusal(
        lambda: releases.rollback(target(v1_0_0="revoked"), promoted, NOW)
    )
    assert "v9.0.0 of fraud-detection is not registered" in refusal(
        lambda: releases.rollback(target(), promoted, NOW, to="v9.0.0")
    )


def test_serving_since_is_the_start_of_the_unbroken_run_up_to_now() -> None:
    def at(hours: int) -> datetime:
        return NOW - timedelta(hours=hours)

    past = [
        (at(2), release({"v1.0.0": 50, "v1.1.0": 50})),
        (at(30), release({"v1.0.0": 90, "v1.1.0": 10})),
        (at(40), release({"v1.0.0": 100})),
        (at(50), release({"v1.0.0": 90, "v1.1.0": 10})),
    ]
    assert releases.serving_since(past, "v1.1.0") == at(30)
    assert releases.serving_since(past, "v1.0.0") == at(50)
    assert releases.serving_since(past, "v1.2.0") is None
    assert releases.serving_since([(at(1), None), *past], "v1.1.0") is None


def test_soak_refusal_says_how_long_it_served() -> None:
    past = [(NOW - timedelta(hours=3, minutes=5), release({"v1.0.0": 90, "v1.1.0": 10}))]
    prod = target("prod")
    requires = Requires(stack="staging", soak="24h")
    releases.require_soaked(prod, ["v1.0.0"], Requires(stack="staging", soak="3h"), past, NOW)
    assert "has served on staging for only 3h 5m, and prod requires 24h there first" in refusal(
        lambda: releases.require_soaked(prod, ["v1.1.0"], requires, past, NOW)
    )
    assert "v1.2.0 of fraud-detection does not serve on staging" in refusal(
        lambda: releases.require_soaked(prod, ["v1.2.0"], requires, past, NOW)
    )


def test_format_duration() -> None:
    assert releases.format_duration(0) == "0m"
    assert releases.format_duration(3 * 86400 + 7200 + 60) == "3d 2h"
    assert releases.format_duration(3600 + 300) == "1h 5m"


def test_edit_changes_only_the_model_release_and_keeps_comments() -> None:
    text = (
        "# the staging stack\n"
        "config:\n"
        "  modelctl:environment:\n"
        "    namespace: models-staging  # shared\n"
        "    image: ghcr.io/acme/serving:1\n"
        "    dvc_remote: s3://bucket/dvc\n"
        "  modelctl:releases:\n"
        "    fraud-detection:\n"
        "      replicas: {min: 3, max: 6}\n"
        "      traffic:\n"
        "        v1.0.0: 100  # stable since Monday\n"
        "    other:\n"
        "      traffic: {v2.0.0: 100}\n"
    )
    before = release({"v1.0.0": 100}, replicas={"min": 3, "max": 6})
    after = releases.canary(target(), before, "v1.1.0").release
    edited = releases.edit_stack_text(text, "staging", "fraud-detection", before, after)
    # The comment keeps its column.
    assert edited == text.replace(
        "        v1.0.0: 100  # stable since Monday\n",
        "        v1.0.0: 95   # stable since Monday\n        v1.1.0: 5\n      rollback_to: v1.0.0\n",
    )


def test_edit_restores_key_order_and_removes_cleared_fields() -> None:
    doc = stack_doc({"v1.1.0": 100, "v1.0.0": 0})
    doc["config"]["modelctl:releases"]["fraud-detection"]["shadow"] = {"version": "v1.2.0", "percent": 10}
    before = release({"v1.1.0": 100, "v1.0.0": 0}, shadow={"version": "v1.2.0", "percent": 10})
    after = release({"v1.0.0": 100, "v1.1.0": 0})
    edited = releases.edit_stack_text(yamlio.dumps(doc), "staging", "fraud-detection", before, after)
    assert edited == yamlio.dumps(stack_doc({"v1.0.0": 100, "v1.1.0": 0}))


@pytest.mark.parametrize(
    ("before", "operation", "expected"),
    [
        (release({"v1.0.0": 75, "v1.1.0": 25}, rollback_to="v1.0.0"), "rollback", True),
        # Back to the warm predecessor, named: it had a weight, so it has pods.
        (release({"v1.0.0": 0, "v1.1.0": 100}, rollback_to="v1.0.0"), "rollback", True),
        (release({"v1.0.0": 100}, shadow={"version": "v1.1.0", "percent": 10}), "rollback", True),
        (release({"v1.0.0": 75, "v1.1.0": 25}, rollback_to="v1.0.0"), "promote", False),
        (release({"v1.0.0": 75, "v1.1.0": 25}, rollback_to="v1.0.0"), "canary", False),
        (release({"v1.0.0": 100}), "shadow", False),
    ],
    ids=["canary-rolled-back", "to-the-warm-version", "shadow-dropped", "promote", "step", "shadow-started"],
)
def test_only_a_rollback_restores(before: Release, operation: str, expected: bool) -> None:
    """What may deploy without a second review: traffic back on a version that already had pods,
    the versions it left held; a promotion or a step moves traffic forward."""
    acts: dict[str, Callable[[], releases.Proposal]] = {
        "rollback": lambda: releases.rollback(target(), before, NOW, to="v1.0.0", reason="INC-1"),
        "promote": lambda: releases.promote(target(), before),
        "canary": lambda: releases.canary(target(), before, "v1.1.0"),
        "shadow": lambda: releases.shadow(target(), before, "v1.1.0", 10.0),
    }
    assert releases.restores(before, acts[operation]().release) is expected
    assert releases.restores(before, before) is True
    assert releases.restores(None, before) is releases.restores(before, None) is False
