"""Every user request is mirrored to the shadow, returning users (sticky cookie) too: Istio mirrors
only the requests of the route holding `mirror`, so it is on each sticky route and the weighted one.
And the stack file's `prediction_log` turns the log on in every version's server, with one sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.build import build_stack
from modelctl.core.state import load_state
from onebox import envoy
from tests.factories import full_docs, write_repo
from tests.test_onebox_envoy import routed


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models, stacks = full_docs()
    release = stacks["staging"]["config"]["modelctl:releases"]["fraud-detection"]
    release["shadow"] = {"version": "v1.0.0", "percent": 40}
    release["prediction_log"] = {"sample": 0.25}
    return write_repo(tmp_path_factory.mktemp("mirror") / "repo", models, stacks, git=False)


def test_sticky_and_weighted_routes_mirror_and_overrides_do_not(root: Path) -> None:
    [vs] = [
        o
        for o in build_stack(load_state(root), "staging")
        if o["kind"] == "VirtualService" and o["metadata"]["name"] == "fraud-detection"
    ]
    mirrors = {
        r["name"]: (r.get("mirror", {}).get("subset"), r.get("mirrorPercentage")) for r in vs["spec"]["http"]
    }
    shadow = ("v1-0-0", {"value": 40.0})
    assert mirrors == {
        "override-v1-2-0-0": (None, None),
        "sticky-v1-1-0": shadow,
        "sticky-v1-2-0": shadow,
        "weighted": shadow,
    }


def test_envoy_mirrors_every_route_that_holds_a_mirror(root: Path) -> None:
    [fraud] = [
        r for r in routed("staging", root) if r.virtual_service["metadata"]["name"] == "fraud-detection"
    ]
    _, route_config = envoy.resources([fraud])
    mirrors = {
        r["name"]: r["route"].get("request_mirror_policies")
        for r in route_config["virtual_hosts"][0]["routes"]
    }
    host = fraud.virtual_service["spec"]["hosts"][0]
    # One mirror policy per mirrored route, each with the route's percentage (per million).
    shadow = [
        {
            "cluster": f"outbound|80|v1-0-0|{host}",
            "runtime_fraction": {"default_value": {"numerator": 400000, "denominator": "MILLION"}},
            "trace_sampled": False,
        }
    ]
    assert mirrors == {
        "override-v1-2-0-0": None,
        "sticky-v1-1-0": shadow,
        "sticky-v1-2-0": shadow,
        "weighted": shadow,
    }


def test_every_version_of_the_model_logs_predictions_with_one_sample(root: Path) -> None:
    objects = build_stack(load_state(root), "staging")
    args = {
        o["metadata"]["labels"]["app"] + " " + o["metadata"]["labels"]["version"]: o["spec"]["template"][
            "spec"
        ]["containers"][0].get("args")
        for o in objects
        if o["kind"] == "Deployment"
    }
    logged = ["--prediction-log", "-", "--prediction-log-sample", "0.25"]
    assert args == {
        "fraud-detection v1.0.0": logged,
        "fraud-detection v1.1.0": logged,
        "fraud-detection v1.2.0": logged,
        "churn v2.0.0": None,
        "churn v2.1.0-rc.1": None,
    }
