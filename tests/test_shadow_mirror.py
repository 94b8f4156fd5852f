"""Every user request is mirrored to the shadow, returning users (sticky cookie) too: Istio mirrors
only the requests of the route holding `mirror`, so it is on each sticky route and the weighted one.
And the stack file's `prediction_log` turns the log on in every version's server, with one sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.build import build_stack
from modelctl.core.state import load_state
from onebox.processes import free_port
from onebox.proxy import nginx_config
from tests.factories import full_docs, write_repo
from tests.test_onebox_proxy import NGINX, nginx_check, routed


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


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed; run make tools")
def test_nginx_mirrors_every_route_that_holds_a_mirror(root: Path, tmp_path: Path) -> None:
    [fraud] = [
        r for r in routed("staging", root) if r.virtual_service["metadata"]["name"] == "fraud-detection"
    ]
    conf = nginx_config([fraud], free_port(), str(tmp_path))
    check = nginx_check(conf, tmp_path)
    assert check.returncode == 0, check.stderr
    # One mirror decision per mirrored route, each with the route's percentage.
    assert conf.count("40% vs0_v1-0-0;") == 3


def test_every_version_of_the_model_logs_predictions_with_one_sample(root: Path) -> None:
    objects = build_stack(load_state(root), "staging")
    args = {
        o["metadata"]["labels"]["app"] + " " + o["metadata"]["labels"]["version"]: o["spec"]["template"][
            "spec"
        ]["containers"][0]["args"]
        for o in objects
        if o["kind"] == "Deployment"
    }
    logged = ["--prediction-log", "-", "--prediction-log-sample", "0.25"]
    # Every server's flags end with the prediction log's, after the feedback store's.
    assert {name: flags[len(flags) - len(logged) :] == logged for name, flags in args.items()} == {
        "fraud-detection v1.0.0": True,
        "fraud-detection v1.1.0": True,
        "fraud-detection v1.2.0": True,
        "churn v2.0.0": False,
        "churn v2.1.0-rc.1": False,
    }
    assert all("--prediction-log" not in args[name] for name in ("churn v2.0.0", "churn v2.1.0-rc.1"))
