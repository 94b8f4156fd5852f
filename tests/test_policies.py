"""Policy rules: each with passing and failing objects; the CrossGuard pack's analyzer in-process on
the resources the Pulumi program registers; and `modelctl check --stack`."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pulumi.runtime import proto
from pulumi_policy import EnforcementLevel
from pulumi_policy.policy import _PolicyAnalyzerServicer

from infra.build import build_stack
from infra.common import subset_name
from modelctl.cli import main
from modelctl.core.state import State, load_state
from policies import pack
from policies.rules import RULES, STACK_RULES, Violation, check_object, check_objects
from tests.factories import full_docs, write_repo
from tests.test_pulumi_program import run_program

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    models, stacks = full_docs()
    models["fraud-detection"]["versions"]["v1.2.0"]["metrics"]["recall"] = 0.5  # fails the 0.75 gate
    return load_state(write_repo(tmp_path_factory.mktemp("full"), models, stacks, git=False))


def first(state: State, stack: str, kind: str, app: str = "fraud-detection") -> Obj:
    objects = build_stack(state, stack)
    return copy.deepcopy(
        next(o for o in objects if o["kind"] == kind and o["metadata"]["labels"].get("app") == app)
    )


def rules_broken(obj: Obj, state: State) -> set[str]:
    return {v.rule for v in check_object(obj, state)}


def test_every_rendered_object_of_every_stack_passes(state: State) -> None:
    for stack in state.stacks:
        assert check_objects(build_stack(state, stack), state) == [], stack


def test_subset_names_agree_with_the_builders(state: State) -> None:
    vs = first(state, "staging", "VirtualService", "churn")
    assert rules_broken(vs, state) == set()
    assert subset_name("v2.1.0-rc.1") == "v2-1-0-rc-1"


# ---------------------------------------------------------------- traffic


def test_weights_must_sum_to_100(state: State) -> None:
    vs = first(state, "staging", "VirtualService")
    vs["spec"]["http"][-1]["route"][1]["weight"] = 20
    [violation] = check_object(vs, state)
    assert violation.rule == "traffic-weights"
    assert "weights summing to 110, not 100" in violation.message


def test_routes_must_name_registered_unrevoked_versions(state: State) -> None:
    vs = first(state, "staging", "VirtualService")
    vs["spec"]["http"][-1]["route"][0]["destination"]["subset"] = "v9-9-9"
    assert "traffic-weights" in rules_broken(vs, state)
    model = state.models["fraud-detection"]
    staging_vs = first(state, "staging", "VirtualService")
    for status, refused in (("deprecated", False), ("revoked", True)):
        record = model.versions["v1.1.0"].model_copy(update={"status": status})
        changed = model.model_copy(update={"versions": {**model.versions, "v1.1.0": record}})
        with_status = dataclasses.replace(state, models={**state.models, "fraud-detection": changed})
        messages = [v.message for v in check_objects([staging_vs], with_status)]
        assert any("v1.1.0, which is revoked" in m for m in messages) == refused, status


def test_production_traffic_only_reaches_versions_passing_the_gates(state: State) -> None:
    vs = first(state, "prod", "VirtualService")
    assert rules_broken(vs, state) == set(), "a failing version may be the shadow"
    weighted = vs["spec"]["http"][-1]
    failing = copy.deepcopy(weighted["route"][0])
    failing["destination"]["subset"] = "v1-2-0"
    weighted["route"][0]["weight"], failing["weight"] = 90, 10
    weighted["route"].append(failing)
    [violation] = check_object(vs, state)
    assert "serves v1.2.0, which fails recall 0.5 < 0.75" in violation.message
    staging = first(state, "staging", "VirtualService")
    assert rules_broken(staging, state) == set(), "gates apply to production stacks only"


def test_header_overrides_may_reach_a_version_failing_the_gates(state: State) -> None:
    vs = first(state, "prod", "VirtualService")
    override = {
        "name": "override-v1-2-0-0",
        "match": [{"headers": {"x-model-version": {"exact": "v1.2.0"}}}],
        "route": [{"destination": {**vs["spec"]["http"][-1]["route"][0]["destination"], "subset": "v1-2-0"}}],
    }
    vs["spec"]["http"].insert(0, override)
    assert rules_broken(vs, state) == set()


# ---------------------------------------------------------------- pods


def pod(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def _drop_non_root(deployment: Obj) -> None:
    pod(deployment)["securityContext"].pop("runAsNonRoot")
    for container in pod(deployment)["initContainers"] + pod(deployment)["containers"]:
        container["securityContext"].pop("runAsNonRoot")


@pytest.mark.parametrize(
    ("rule", "mutate", "message"),
    [
        (
            "resource-limits",
            lambda d: pod(d)["initContainers"][0]["resources"].pop("limits"),
            "fetch-model has no cpu limit",
        ),
        (
            "health-probes",
            lambda d: pod(d)["containers"][0].pop("readinessProbe"),
            "server has no readinessProbe",
        ),
        (
            "non-root",
            lambda d: pod(d)["containers"][0]["securityContext"].update(runAsUser=0),
            "server runs as user 0",
        ),
        ("non-root", _drop_non_root, "does not set runAsNonRoot"),
        (
            "read-only-root-fs",
            lambda d: pod(d)["initContainers"][1]["securityContext"].update(readOnlyRootFilesystem=False),
            "fetch-profile does not set readOnlyRootFilesystem",
        ),
        (
            "pinned-images",
            lambda d: pod(d)["containers"][0].update(image="ghcr.io/acme/serving:latest"),
            "uses 'latest'",
        ),
        (
            "pinned-images",
            lambda d: pod(d)["containers"][0].update(image="registry:5000/acme/serving"),
            "has no tag",
        ),
        (
            "no-plaintext-secrets",
            lambda d: pod(d)["containers"][0]["env"].append({"name": "DB_PASSWORD", "value": "hunter2"}),
            "].value looks like a credential (key 'DB_PASSWORD')",
        ),
    ],
)
def test_pod_rules_refuse_what_they_guard(
    rule: str, mutate: Callable[[Obj], Any], message: str, state: State
) -> None:
    deployment = first(state, "staging", "Deployment")
    assert rules_broken(deployment, state) == set()
    mutate(deployment)
    violations = [v for v in check_object(deployment, state) if v.rule == rule]
    assert any(message in v.message for v in violations), violations


def test_production_images_need_a_digest(state: State) -> None:
    deployment = first(state, "prod", "Deployment")
    assert rules_broken(deployment, state) == set()
    pod(deployment)["containers"][0]["image"] = "ghcr.io/acme/modelctl-serving:0.1.0"
    [violation] = check_object(deployment, state)
    assert violation.rule == "pinned-images"
    assert "not pinned by @sha256 digest" in violation.message
    staging = first(state, "staging", "Deployment")
    assert pod(staging)["containers"][0]["image"] == "ghcr.io/acme/modelctl-serving:0.1.0"
    assert rules_broken(staging, state) == set()


def test_env_from_a_secret_reference_is_fine(state: State) -> None:
    deployment = first(state, "staging", "Deployment")
    reference = {"secretKeyRef": {"name": "db", "key": "password"}}
    pod(deployment)["containers"][0]["env"].append({"name": "DB_PASSWORD", "valueFrom": reference})
    assert rules_broken(deployment, state) == set()


SLACK_HOOK = "https://hooks.slack.com/services/T0000000/B0000000/XXXXXXXXXXXXXXXXXXXXXXXX"
CREDENTIAL_SHAPES = {
    "a Slack webhook URL": SLACK_HOOK,
    "a Slack token": "xoxb-1234567890-abcdefghij",
    "a Discord webhook URL": "https://discord.com/api/webhooks/123456/abcDEF",
    "a Microsoft Teams webhook URL": "https://acme.webhook.office.com/webhookb2/abc@def/IncomingWebhook/x",
    "a URL with a password": "postgres://app:hunter22@db.internal/app",
    "a URL with a token": "https://pager.example.com/hook?token=0123456789abcdef",
    "a private key": "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----",
    "an HTTP credential": "Bearer eyJhbGciOiJIUzI1NiJ9abcdefgh",
    "an AWS access key id": "AKIAIOSFODNN7EXAMPLE",
    "a GitHub token": "ghp_" + "a" * 36,
    "a GitLab token": "glpat-" + "b" * 20,
    "a Google API key": "AIza" + "c" * 35,
    "a Stripe secret key": "sk_live_" + "d" * 24,
    "an OpenAI API key": "sk-proj-" + "e" * 40,
    "a JSON web token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
}


def _plant(obj: Obj, place: str, value: str) -> None:
    """Put `value` in one place of a rendered object, as a careless edit of infra/ would."""
    if place == "annotation":
        obj["metadata"].setdefault("annotations", {})["notes"] = value
    elif place == "route header":
        obj["spec"]["http"][-1]["headers"] = {"request": {"set": {"x-forward": value}}}
    elif place == "alert annotation":
        obj["spec"]["groups"][0]["rules"][0]["annotations"]["runbook_url"] = value
    elif place == "webhook url":
        obj["spec"]["receivers"][-1]["webhookConfigs"][0]["url"] = value
    elif place == "dashboard":
        [key] = obj["data"]
        obj["data"][key] = obj["data"][key].replace('"title"', f'"link": "{value}", "title"', 1)


PLACES = {
    "annotation": "Service",
    "route header": "VirtualService",
    "alert annotation": "PrometheusRule",
    "webhook url": "AlertmanagerConfig",
    "dashboard": "ConfigMap",
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("what", CREDENTIAL_SHAPES)
def test_a_credential_anywhere_in_any_object_is_refused(place: str, what: str, state: State) -> None:
    obj = next(o for o in build_stack(state, "prod") if o["kind"] == PLACES[place])
    obj = copy.deepcopy(obj)
    assert rules_broken(obj, state) == set()
    _plant(obj, place, CREDENTIAL_SHAPES[what])
    [violation] = [v for v in check_object(obj, state) if v.rule == "no-plaintext-secrets"]
    assert violation.message.endswith(f"looks like {what}")
    assert CREDENTIAL_SHAPES[what] not in str(violation), "a finding never repeats the secret"


@pytest.mark.parametrize(
    "value",
    [
        "https://pager.example.com/hook",
        "https://hooks.example.com/services/ok",
        "s3://acme-ml-artifacts/dvc",
        "ghcr.io/acme/modelctl-serving:0.1.0@sha256:" + "f" * 64,
        "0123456789abcdef0123456789abcdef",
        'sum by (model) (rate(model_requests_total{code=~"5.."}[5m]))',
        "infra/runbooks.md#token-expiry",
        "arn:aws:iam::123456789012:role/modelctl-prod-read-artifacts",
    ],
)
def test_ordinary_values_are_no_credentials(value: str, state: State) -> None:
    obj = copy.deepcopy(next(o for o in build_stack(state, "prod") if o["kind"] == "Service"))
    _plant(obj, "annotation", value)
    assert rules_broken(obj, state) == set()


def test_a_secrets_own_values_and_references_are_where_credentials_belong(state: State) -> None:
    secret = copy.deepcopy(next(o for o in build_stack(state, "prod") if o["kind"] == "Secret"))
    secret["stringData"]["slackUrl"] = SLACK_HOOK  # what the Pulumi program puts there
    assert rules_broken(secret, state) == set()
    config = copy.deepcopy(next(o for o in build_stack(state, "prod") if o["kind"] == "AlertmanagerConfig"))
    assert config["spec"]["receivers"][1]["emailConfigs"][0]["authPassword"] == {
        "name": "modelctl-alerting",
        "key": "smtpPassword",
    }
    assert rules_broken(config, state) == set()
    secret["metadata"]["annotations"] = {"source": SLACK_HOOK}
    assert rules_broken(secret, state) == {"no-plaintext-secrets"}


@pytest.mark.parametrize(
    "data",
    [
        {"smtp_password": "x"},
        {"notify": "https://hooks.slack.com/services/T000/B000/XXXX"},
        {"db": "postgres://app:pw@db/app"},
    ],
)
def test_config_maps_must_not_hold_credentials(data: dict[str, str], state: State) -> None:
    config_map = next(o for o in build_stack(state, "prod") if o["kind"] == "ConfigMap")
    assert rules_broken(config_map, state) == set()
    config_map = {**config_map, "data": {**config_map["data"], **data}}
    assert rules_broken(config_map, state) == {"no-plaintext-secrets"}


def _without_deployment(objects: list[Obj], version: str) -> list[Obj]:
    return [
        o
        for o in objects
        if not (o["kind"] == "Deployment" and o["metadata"]["labels"].get("version") == version)
    ]


def _route(objects: list[Obj], app: str, name: str) -> Obj:
    vs = next(o for o in objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == app)
    route: Obj = next(r for r in vs["spec"]["http"] if r["name"].startswith(name))
    return route


def _subset_rule(objects: list[Obj], app: str, version: str) -> Obj:
    name = f"{app}-{subset_name(version)}"
    rule: Obj = next(o for o in objects if o["kind"] == "DestinationRule" and o["metadata"]["name"] == name)
    return rule


def _subset(objects: list[Obj], app: str, version: str) -> Obj:
    subset: Obj = _subset_rule(objects, app, version)["spec"]["subsets"][0]
    return subset


def _drop_subset(objects: list[Obj], app: str, version: str) -> None:
    objects.remove(_subset_rule(objects, app, version))


@pytest.mark.parametrize(
    ("stack", "break_it", "message"),
    [
        (  # case 03: a header override to a version with no subset and no Deployment
            "dev",
            lambda objs: _route(objs, "fraud-detection", "weighted")["route"][0]["destination"].update(
                subset="v1-0-0"
            ),
            "route weighted sends traffic to fraud-detection subset 'v1-0-0', which no DestinationRule defines",
        ),
        (
            "staging",
            lambda objs: _drop_subset(objs, "fraud-detection", "v1.2.0"),
            "route override-v1-2-0-0 sends traffic to fraud-detection subset 'v1-2-0', which no DestinationRule",
        ),
        (
            "staging",
            lambda objs: objs.__setitem__(slice(None), _without_deployment(objs, "v1.2.0")),
            "route override-v1-2-0-0 sends traffic to fraud-detection subset 'v1-2-0', whose labels select no",
        ),
        (
            "staging",
            lambda objs: objs.__setitem__(slice(None), _without_deployment(objs, "v1.2.0")),
            "route sticky-v1-2-0 sends traffic to fraud-detection subset 'v1-2-0', whose labels select no",
        ),
        (
            "staging",
            lambda objs: objs.__setitem__(slice(None), _without_deployment(objs, "v2.1.0-rc.1")),
            "route weighted (mirror) sends traffic to churn subset 'v2-1-0-rc-1', whose labels select no",
        ),
        (
            "prod",
            lambda objs: _subset(objs, "fraud-detection", "v1.1.0")["labels"].update(version="v1.1"),
            "route weighted sends traffic to fraud-detection subset 'v1-1-0', whose labels select no",
        ),
        (
            "prod",
            lambda objs: _route(objs, "churn", "weighted")["route"][0]["destination"].update(
                host="churn.models-staging.svc.cluster.local"
            ),
            "route weighted sends traffic to churn subset 'v2-0-0', which no DestinationRule defines",
        ),
    ],
    ids=[
        "override-no-subset",
        "override-subset-removed",
        "override-no-deployment",
        "sticky",
        "mirror",
        "subset-labels",
        "other-namespace",
    ],
)
def test_every_route_destination_has_a_subset_and_a_deployment(
    state: State, stack: str, break_it: Callable[[list[Obj]], None], message: str
) -> None:
    objects = copy.deepcopy(build_stack(state, stack))
    assert [v for v in check_objects(objects, state) if v.rule == "route-destinations"] == []
    break_it(objects)
    found = [str(v) for v in check_objects(objects, state) if v.rule == "route-destinations"]
    assert any(message in line for line in found), found


def _host_rule(objects: list[Obj], app: str) -> Obj:
    rule: Obj = next(o for o in objects if o["kind"] == "DestinationRule" and o["metadata"]["name"] == app)
    return rule


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda objs: _host_rule(objs, "fraud-detection")["spec"].update(
                subsets=[{"name": "v1-1-0", "labels": {"version": "v1.0.0"}}]
            ),
            "the DestinationRules of fraud-detection in models-test: subset 'v1-1-0' is defined by "
            "models-test/fraud-detection-v1-1-0 and again by models-test/fraud-detection",
        ),
        (
            lambda objs: _subset_rule(objs, "churn", "v2.0.0")["spec"].update(
                trafficPolicy={"loadBalancer": {"simple": "RANDOM"}}
            ),
            "the DestinationRules of churn in models-test: models-test/churn-v2-0-0, models-test/churn "
            "each set a trafficPolicy; istiod applies only the oldest",
        ),
    ],
    ids=["subset-twice", "two-policies"],
)
def test_the_rules_of_one_host_merge_without_loss(
    state: State, break_it: Callable[[list[Obj]], None], message: str
) -> None:
    objects = copy.deepcopy(build_stack(state, "staging"))
    assert [v for v in check_objects(objects, state) if v.rule == "host-rules-merge"] == []
    break_it(objects)
    assert [v.message for v in check_objects(objects, state) if v.rule == "host-rules-merge"] == [message]


def test_the_pack_refuses_a_route_to_a_version_without_pods(
    recorded: list[tuple[str, str, dict[str, Any]]],
) -> None:
    without = [
        r for r in recorded if not (r[0].endswith(":Deployment") and r[1].endswith("fraud-detection-v1-2-0"))
    ]
    assert analyze(without) == [
        (
            "route-destinations",
            "VirtualService models-prod/fraud-detection route weighted (mirror) sends traffic to fraud-detection "
            "subset 'v1-2-0', whose labels select no Deployment's pods",
        )
    ]


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_every_served_model_is_monitored(kind: str, state: State) -> None:
    objects = [
        o for o in build_stack(state, "prod") if not (o["kind"] == kind and o["metadata"]["name"] == "churn")
    ]
    assert [str(v) for v in check_objects(objects, state)] == [
        f"monitored-models: model churn in models-prod has no {kind}"
    ]


def test_violations_read_as_one_line(state: State) -> None:
    violation = Violation(
        "non-root", "Deployment", "ns/app", "container x runs as user 0", "set runAsNonRoot"
    )
    assert str(violation) == "non-root: Deployment ns/app: container x runs as user 0"
    assert {r.name for r in RULES} | {r.name for r in STACK_RULES} == {
        "traffic-weights", "production-gates", "resource-limits", "health-probes", "non-root",
        "read-only-root-fs", "pinned-images", "no-plaintext-secrets", "monitored-models", "route-destinations",
        "host-rules-merge",
    }  # fmt: skip


# ---------------------------------------------------------------- the CrossGuard pack, in-process


def analyzer() -> _PolicyAnalyzerServicer:
    return _PolicyAnalyzerServicer(pack.PACK_NAME, "0.1.0", pack.pack_policies(), EnforcementLevel.MANDATORY)


def analyze(resources: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """(policy, message) of every violation the pack reports, resource by resource and for the stack."""
    server = analyzer()
    found: list[tuple[str, str]] = []
    stack_resources = []
    for typ, name, props in resources:
        urn = f"urn:pulumi:prod::modelctl::{typ}::{name}"
        request = proto.AnalyzeRequest(type=typ, properties=props, urn=urn, name=name)
        response = server.Analyze(request, None)  # type: ignore[no-untyped-call]
        found += [(d.policyName, d.message.splitlines()[-1]) for d in response.diagnostics]
        stack_resources.append(proto.AnalyzerResource(type=typ, properties=props, urn=urn, name=name))
    stack_request = proto.AnalyzeStackRequest(resources=stack_resources)
    stack_response = server.AnalyzeStack(stack_request, None)  # type: ignore[no-untyped-call]
    return found + [(d.policyName, d.message.splitlines()[-1]) for d in stack_response.diagnostics]


@pytest.fixture
def recorded(state: State, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    monkeypatch.setattr(pack, "repository_state", lambda: state)
    run = run_program(state.root, "prod", monkeypatch)
    return [(r.typ, r.name, r.inputs) for r in run.recorder.resources]


def test_the_pack_passes_the_programs_resources(recorded: list[tuple[str, str, dict[str, Any]]]) -> None:
    assert any(typ.endswith(":Deployment") for typ, _, _ in recorded)
    assert analyze(recorded) == []


def test_the_pack_reports_violations_in_registered_inputs(
    recorded: list[tuple[str, str, dict[str, Any]]],
) -> None:
    broken = []
    for typ, name, props in recorded:
        if typ.endswith("monitoring.coreos.com/v1:ServiceMonitor") and name.endswith("/churn"):
            continue
        if typ.endswith(":Deployment") and name.endswith("fraud-detection-v1-1-0"):
            props = copy.deepcopy(props)  # noqa: PLW2901
            props["spec"]["template"]["spec"]["containers"][0]["securityContext"][
                "readOnlyRootFilesystem"
            ] = False
        broken.append((typ, name, props))
    assert analyze(broken) == [
        ("read-only-root-fs", "container server does not set readOnlyRootFilesystem: true"),
        ("monitored-models", "model churn in models-prod has no ServiceMonitor"),
    ]


def test_pack_objects_get_whole_numbers_back() -> None:
    obj = pack.as_object(
        "kubernetes:autoscaling/v2:HorizontalPodAutoscaler", {"spec": {"minReplicas": 2.0, "x": 0.5}}
    )
    assert obj == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {},
        "spec": {"minReplicas": 2, "x": 0.5},
    }
    assert pack.as_object("kubernetes:core/v1:Secret", {})["apiVersion"] == "v1"  # type: ignore[index]
    assert pack.as_object("kubernetes:helm.sh/v3:Release", {}) is None
    assert pack.as_object("aws:s3/bucket:Bucket", {}) is None


# ---------------------------------------------------------------- modelctl check


def test_check_runs_the_policies_on_every_stack(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", str(state.root), "check"]) == 0
    assert "policies pass on" in capsys.readouterr().out


def test_check_reports_each_violation_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models, stacks = full_docs()
    stacks["prod"]["config"]["modelctl:environment"]["image"] = "ghcr.io/acme/modelctl-serving:0.1.0"
    root = write_repo(tmp_path, models, stacks, git=False)
    assert main(["-C", str(root), "check", "--stack", "staging"]) == 0
    capsys.readouterr()
    assert main(["-C", str(root), "check", "--stack", "prod"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 12  # 4 deployments x 3 containers
    assert lines[0] == (
        "error: Pulumi.prod.yaml: policy pinned-images: Deployment models-prod/churn-v2-0-0: container fetch-model "
        "image 'ghcr.io/acme/modelctl-serving:0.1.0' is not pinned by @sha256 digest; "
        "use a versioned tag, and on production stacks name:tag@sha256:<digest>"
    )
