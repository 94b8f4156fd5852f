"""The canary analysis CronJob: declared only where a stack asks for it, with no Kubernetes
permissions, a deploy key from Pulumi secret config, and egress only to Prometheus, DNS and git."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.build import build_stack
from infra.common import secret_placeholder
from modelctl.core.errors import UserError, UserErrors
from modelctl.core.state import State, load_state
from policies.rules import check_objects
from tests.factories import ANALYSIS_JOB, full_docs, write_repo

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    models, stacks = full_docs()
    return load_state(write_repo(tmp_path_factory.mktemp("full"), models, stacks, git=False))


def job_objects(state: State, stack: str) -> dict[str, Obj]:
    return {
        o["kind"]: o for o in build_stack(state, stack) if o["metadata"]["name"] == "modelctl-canary-analysis"
    }


def test_only_stacks_with_analysis_settings_get_the_job(state: State) -> None:
    assert sorted(job_objects(state, "dev")) == ["CronJob", "NetworkPolicy", "Secret", "ServiceAccount"]
    assert job_objects(state, "staging") == {}
    assert job_objects(state, "prod") == {}


def test_the_job_runs_canary_analyze_from_the_analysis_image_without_kubernetes_permissions(
    state: State,
) -> None:
    objects = job_objects(state, "dev")
    assert objects["ServiceAccount"]["automountServiceAccountToken"] is False
    assert not [
        o for o in build_stack(state, "dev") if o["kind"] in ("Role", "RoleBinding", "ClusterRoleBinding")
    ]
    cron = objects["CronJob"]["spec"]
    assert cron["schedule"] == ANALYSIS_JOB["schedule"]
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "modelctl-canary-analysis"
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["image"] == ANALYSIS_JOB["image"] != state.stack("dev").config.environment.image
    assert (
        'modelctl canary analyze --stack "$STACK" --prometheus "$PROMETHEUS_URL"' in container["command"][-1]
    )
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PROMETHEUS_URL"] == "http://prometheus-operated.monitoring:9090"
    assert env["REPOSITORY"] == ANALYSIS_JOB["repository"]
    secret = objects["Secret"]
    assert secret["stringData"]["ssh-privatekey"] == secret_placeholder("analysisDeployKey")
    assert "StrictHostKeyChecking=yes" in container["command"][-1]


def test_the_job_reaches_only_prometheus_dns_and_the_git_host(state: State) -> None:
    policy = job_objects(state, "dev")["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == []
    dns, prometheus, git = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert prometheus["to"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert prometheus["ports"] == [{"protocol": "TCP", "port": 9090}]
    assert [t["ipBlock"]["cidr"] for t in git["to"]] == ANALYSIS_JOB["git_cidrs"]
    assert git["ports"] == [{"protocol": "TCP", "port": 22}]


def test_the_job_passes_every_policy_and_a_rootful_one_does_not(state: State) -> None:
    objects = list(job_objects(state, "dev").values())
    assert check_objects(objects, state) == []
    cron = objects[[o["kind"] for o in objects].index("CronJob")]
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesystem"
    ] = False
    assert [v.rule for v in check_objects([cron], state)] == ["read-only-root-fs"]


def test_analysis_settings_need_a_prometheus_url(tmp_path: Path) -> None:
    models, stacks = full_docs()
    del stacks["dev"]["config"]["modelctl:environment"]["monitoring"]
    with pytest.raises((UserError, UserErrors), match=r"needs monitoring\.prometheus_url"):
        load_state(write_repo(tmp_path / "repo", models, stacks, git=False))
