"""What the builders turn a desired state into: the objects a cluster runs, one behaviour per test."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.build import build_stack
from modelctl.core.analysis.margins import error_margin, latency_ratio
from modelctl.core.contract import subset_name
from modelctl.core.errors import UserError
from modelctl.core.mesh import merged_destination_rules
from modelctl.core.schema import ModelFile, StackConfig
from modelctl.core.servingspec import ServingSpec
from modelctl.core.state import Stack, State, cross_check, load_allow_list, load_state
from policies.rules import check_objects
from tests.factories import PROD_IMAGE, default_docs, full_docs, model_doc, stack_doc, write_repo

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    return load_state(write_repo(tmp_path_factory.mktemp("full"), *full_docs(), git=False))


def objects_of(state: State, stack: str, kind: str, app: str | None = None) -> list[Obj]:
    return [
        obj
        for obj in build_stack(state, stack)
        if obj["kind"] == kind and (app is None or obj["metadata"]["labels"].get("app") == app)
    ]


def one(state: State, stack: str, kind: str, app: str | None = None) -> Obj:
    [obj] = objects_of(state, stack, kind, app)
    return obj


def test_build_is_deterministic_and_starts_with_the_namespace(state: State) -> None:
    objects = build_stack(state, "prod")
    assert objects == build_stack(state, "prod")
    assert objects[0]["kind"] == "Namespace"
    assert objects[0]["metadata"]["name"] == "models-prod"
    assert objects[0]["metadata"]["labels"]["istio-injection"] == "enabled"
    assert all(obj["metadata"].get("namespace") == "models-prod" for obj in objects[1:])


def test_every_deployed_version_gets_a_deployment_and_an_autoscaler(state: State) -> None:
    # prod: v1.1.0 serves, v1.0.0 stays warm at weight 0, v1.2.0 is the shadow.
    deployments = objects_of(state, "prod", "Deployment", "fraud-detection")
    assert [d["metadata"]["labels"]["version"] for d in deployments] == ["v1.0.0", "v1.1.0", "v1.2.0"]
    assert [d["metadata"]["name"] for d in deployments] == [
        "fraud-detection-v1-0-0",
        "fraud-detection-v1-1-0",
        "fraud-detection-v1-2-0",
    ]
    hpas = objects_of(state, "prod", "HorizontalPodAutoscaler", "fraud-detection")
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == [d["metadata"]["name"] for d in deployments]
    assert hpas[0]["spec"]["minReplicas"] == 2
    assert hpas[0]["spec"]["maxReplicas"] == 10
    assert "replicas" not in deployments[0]["spec"], "the HPA owns the replica count"
    assert [d["metadata"]["labels"]["version"] for d in objects_of(state, "dev", "Deployment")] == ["v1.2.0"]


def test_init_containers_fetch_the_recorded_artifact_and_profile_by_content_address(state: State) -> None:
    deployment = objects_of(state, "prod", "Deployment", "fraud-detection")[1]
    record = state.models["fraud-detection"].versions["v1.1.0"]
    pod = deployment["spec"]["template"]["spec"]
    fetches = {c["name"]: c["command"] for c in pod["initContainers"]}
    remote = state.stacks["prod"].config.environment.dvc_remote
    assert fetches == {
        "fetch-model": ["modelctl", "fetch", "--md5", record.artifact.md5, "--sha256", record.artifact.sha256,
                        "--remote", remote, "-o", "/models/model.skops"],
        "fetch-profile": ["modelctl", "fetch", "--md5", record.profile.md5, "--sha256", record.profile.sha256,
                          "--remote", remote, "-o", "/models/profile.npz"],
    }  # fmt: skip
    assert {v["name"] for v in pod["volumes"] if "emptyDir" in v} == {"models", "tmp"}


def test_every_server_takes_labels_through_the_stacks_feedback_store(state: State) -> None:
    objects = build_stack(state, "prod")
    namespace = state.stacks["prod"].config.environment.namespace
    store = {
        (o["kind"], o["metadata"]["name"]): o for o in objects if "modelctl-feedback" in o["metadata"]["name"]
    }
    assert set(store) == {
        ("Secret", "modelctl-feedback"), ("Service", "modelctl-feedback"),
        ("StatefulSet", "modelctl-feedback"), ("NetworkPolicy", "modelctl-feedback"),
    }  # fmt: skip
    secret = store[("Secret", "modelctl-feedback")]["stringData"]
    assert secret == {
        "receipt-keys": "<secret:modelctl:receiptKeys>",
        "store-password": "<secret:modelctl:feedbackStorePassword>",
    }
    redis = store[("StatefulSet", "modelctl-feedback")]["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--appendfsync") + 1] == "always"
    assert redis["env"][0]["valueFrom"]["secretKeyRef"] == {
        "name": "modelctl-feedback",
        "key": "store-password",
    }
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        [server] = deployment["spec"]["template"]["spec"]["containers"]
        args = server["args"]
        assert args[args.index("--feedback-store") + 1] == (
            f"redis://modelctl-feedback.{namespace}.svc.cluster.local:6379/0"
        )
        assert args[args.index("--feedback-secret") + 1] == "/etc/modelctl/feedback"
        assert float(args[args.index("--feedback-ttl-s") + 1]) == 35 * 86400
        mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
        assert mounts["/etc/modelctl/feedback"]["readOnly"] is True
    ingress = store[("NetworkPolicy", "modelctl-feedback")]["spec"]["ingress"]
    assert ingress == [
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {"app.kubernetes.io/managed-by": "modelctl"},
                        "matchExpressions": [{"key": "version", "operator": "Exists"}],
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": 6379}],
        }
    ]


def test_server_env_is_the_serving_spec_contract(state: State) -> None:
    deployment = objects_of(state, "prod", "Deployment", "fraud-detection")[1]
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in server["env"]}
    expected = ServingSpec.from_record(state.models["fraud-detection"], "v1.1.0", "/models")
    assert env == expected.to_env()
    assert ServingSpec.from_env(env) == expected
    assert server["command"] == ["python", "-m", "serving"]
    assert server["image"] == PROD_IMAGE


def test_pods_are_hardened_and_probed_on_the_inference_protocol(state: State) -> None:
    pod = objects_of(state, "staging", "Deployment", "fraud-detection")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["initContainers"] + pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    [server] = pod["containers"]
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert server["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] > 5
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }


def test_each_deployed_version_has_a_destination_rule_of_its_own(state: State) -> None:
    """The host's rule holds the traffic policy; each version's rule its subset, which istiod
    merges into one rule for the host (modelctl/core/mesh.py)."""
    rules = objects_of(state, "prod", "DestinationRule", "fraud-detection")
    host = "fraud-detection.models-prod.svc.cluster.local"
    assert [(r["metadata"]["name"], r["metadata"]["labels"].get("version")) for r in rules] == [
        ("fraud-detection-v1-0-0", "v1.0.0"),
        ("fraud-detection-v1-1-0", "v1.1.0"),
        ("fraud-detection-v1-2-0", "v1.2.0"),
        ("fraud-detection", None),
    ]
    assert all(rule["spec"]["host"] == host for rule in rules)
    assert [r["spec"].get("subsets") for r in rules] == [
        [{"name": "v1-0-0", "labels": {"version": "v1.0.0"}}],
        [{"name": "v1-1-0", "labels": {"version": "v1.1.0"}}],
        [{"name": "v1-2-0", "labels": {"version": "v1.2.0"}}],
        None,
    ]
    assert [("trafficPolicy" in r["spec"]) for r in rules] == [False, False, False, True]
    merged = merged_destination_rules(rules)[("models-prod", host)]
    assert [s["name"] for s in merged["spec"]["subsets"]] == ["v1-0-0", "v1-1-0", "v1-2-0"]
    assert merged["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] > 0
    assert merged["metadata"]["name"] == "fraud-detection-v1-0-0"


def test_rules_merge_as_istiod_merges_them() -> None:
    """Subsets concatenated, a name's first definition kept, the first traffic policy met taken."""

    def rule(name: str, host: str, *subsets: tuple[str, str], **spec: Any) -> Obj:
        listed = [{"name": n, "labels": {"version": v}} for n, v in subsets]
        return {
            "metadata": {"namespace": "ns", "name": name},
            "spec": {"host": host, "subsets": listed, **spec},
        }

    policy = {"loadBalancer": {"simple": "RANDOM"}}
    merged = merged_destination_rules(
        [
            rule("a", "h", ("x", "1")),
            rule("b", "h", ("x", "2"), ("y", "3"), trafficPolicy=policy),
            rule("c", "g"),
        ]
    )
    assert merged[("ns", "h")] == {
        "metadata": {"namespace": "ns", "name": "a"},
        "spec": {
            "host": "h",
            "subsets": [{"name": "x", "labels": {"version": "1"}}, {"name": "y", "labels": {"version": "3"}}],
            "trafficPolicy": policy,
        },
    }
    assert merged[("ns", "g")]["spec"] == {"host": "g", "subsets": []}


def test_routes_are_overrides_then_sticky_then_weighted(state: State) -> None:
    routes = one(state, "staging", "VirtualService", "fraud-detection")["spec"]["http"]
    assert [r["name"] for r in routes] == ["override-v1-2-0-0", "sticky-v1-1-0", "sticky-v1-2-0", "weighted"]
    assert routes[0]["match"] == [{"headers": {"x-model-version": {"exact": "canary"}}}]
    assert routes[0]["route"][0]["destination"]["subset"] == "v1-2-0"
    weighted = routes[-1]
    assert [(d["destination"]["subset"], d["weight"]) for d in weighted["route"]] == [
        ("v1-1-0", 90),
        ("v1-2-0", 10),
    ]
    assert all(route["timeout"] and route["retries"]["attempts"] for route in routes)


def test_sticky_routes_match_the_cookie_the_weighted_route_sets(state: State) -> None:
    routes = one(state, "staging", "VirtualService", "fraud-detection")["spec"]["http"]
    weighted = routes[-1]["route"]
    set_cookie = weighted[1]["headers"]["response"]["add"]["set-cookie"]
    assert set_cookie.startswith("fraud-version=v1.2.0; Max-Age=3600;")
    cookie = set_cookie.split(";")[0]
    sticky = {
        r["route"][0]["destination"]["subset"]: r["match"][0]["headers"]["cookie"]["regex"]
        for r in routes[1:3]
    }
    for header, expected in [
        (cookie, "v1-2-0"),
        (f"session=abc; {cookie}; theme=dark", "v1-2-0"),
        ("fraud-version=v1.1.0", "v1-1-0"),
    ]:
        assert [subset for subset, regex in sticky.items() if re.fullmatch(regex, header)] == [expected]
    assert not any(re.fullmatch(regex, "fraud-version=v1.2.0x") for regex in sticky.values())
    assert not any(re.fullmatch(regex, "other-fraud-version=v1.2.0") for regex in sticky.values())


def test_shadow_is_a_mirror_on_the_weighted_route(state: State) -> None:
    vs = one(state, "prod", "VirtualService", "fraud-detection")
    [weighted] = vs["spec"]["http"]
    assert weighted["route"] == [
        {
            "destination": {
                "host": "fraud-detection.models-prod.svc.cluster.local",
                "subset": "v1-1-0",
                "port": {"number": 80},
            },
            "weight": 100,
        }
    ]
    assert weighted["mirror"]["subset"] == "v1-2-0"
    assert weighted["mirrorPercentage"] == {"value": 10.0}


def test_an_ingress_gateway_binds_the_external_host(state: State) -> None:
    prod = one(state, "prod", "VirtualService", "churn")["spec"]
    assert prod["hosts"] == ["churn.models-prod.svc.cluster.local", "churn.models.example.com"]
    assert prod["gateways"] == ["istio-system/public", "mesh"]
    assert "gateways" not in one(state, "staging", "VirtualService", "churn")["spec"]


def test_network_policy_admits_the_mesh_and_prometheus_only(state: State) -> None:
    policy = one(state, "prod", "NetworkPolicy", "churn")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app": "churn"}}
    assert policy["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert all("namespaceSelector" in peer for peer in sources)
    assert one(state, "prod", "PodDisruptionBudget", "churn")["spec"]["maxUnavailable"] == 1


def test_alerting_objects_reference_secrets_without_values(state: State) -> None:
    [secret] = [o for o in build_stack(state, "prod") if o["metadata"]["name"] == "modelctl-alerting"]
    assert secret["stringData"] == {
        "smtpPassword": "<secret:modelctl:smtpPassword>",
        "slackUrl": "<secret:modelctl:slackUrl>",
        "pagerToken": "<secret:modelctl:pagerToken>",
    }
    spec = one(state, "prod", "AlertmanagerConfig")["spec"]
    receivers = {r["name"]: r for r in spec["receivers"]}
    assert [r["receiver"] for r in spec["route"]["routes"]] == ["oncall-email", "ml-slack", "pager"]
    assert spec["route"]["routes"][0]["matchers"] == [
        {"name": "severity", "matchType": "=~", "value": "critical"}
    ]
    assert receivers["oncall-email"]["emailConfigs"][0]["authPassword"] == {
        "name": "modelctl-alerting",
        "key": "smtpPassword",
    }
    assert receivers["ml-slack"]["slackConfigs"][0]["apiURL"]["key"] == "slackUrl"
    assert receivers["pager"]["webhookConfigs"][0] == {
        "url": "https://pager.example.com/hook",
        "sendResolved": True,
        "httpConfig": {
            "authorization": {
                "type": "Bearer",
                "credentials": {"name": "modelctl-alerting", "key": "pagerToken"},
            }
        },
    }
    # dev has no receivers: no alerting Secret (its Secrets are the feedback store's and the canary
    # analysis deploy key).
    assert [o["metadata"]["name"] for o in objects_of(state, "dev", "Secret")] == [
        "modelctl-feedback",
        "modelctl-canary-analysis",
    ]
    assert objects_of(state, "dev", "AlertmanagerConfig") == []


def test_dashboard_shows_traffic_errors_latency_drift_ood_and_accuracy(state: State) -> None:
    config_map = one(state, "prod", "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    [text] = config_map["data"].values()
    board = json.loads(text)
    queries = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in ["model_requests_total", "model_prediction_duration_seconds_bucket", "model_feature_drift_p_value",
                   "model_out_of_distribution_total", "model_version:feedback_accuracy",
                   "model_version:feedback_coverage"]:  # fmt: skip
        assert metric in queries
    assert "histogram_quantile(0.5," in queries
    assert "histogram_quantile(0.99," in queries


def test_every_model_is_monitored(state: State) -> None:
    monitor = one(state, "prod", "ServiceMonitor", "churn")
    assert monitor["spec"]["selector"] == {"matchLabels": {"app": "churn"}}
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    names = [
        r["alert"]
        for r in one(state, "prod", "PrometheusRule", "fraud-detection")["spec"]["groups"][0]["rules"]
    ]
    assert names[:5] == [
        "ModelHighErrorRate",
        "ModelHighLatencyP99",
        "ModelFeatureDrift",
        "ModelOutOfDistribution",
        "ModelNoTraffic",
    ]
    assert {
        "ModelLiveAccuracyBelowGate",
        "ModelLiveRecallBelowGate",
        "LowLiveAccuracy",
        "HighFraudScore",
    } <= set(names)


def test_a_gateway_without_a_domain_is_one_clear_error(tmp_path: Path) -> None:
    models, stacks = default_docs()
    stacks["dev"]["config"]["modelctl:environment"]["ingress"] = {"gateway": "istio-system/public"}
    state = load_state(write_repo(tmp_path, models, stacks, git=False))
    with pytest.raises(
        UserError, match=r"Pulumi\.dev\.yaml: .*ingress\.domain: ingress.gateway is set without"
    ):
        build_stack(state, "dev")


def test_versions_whose_subset_names_collide_are_refused(tmp_path: Path) -> None:
    models = {"fraud-detection": model_doc(versions=("v1.0.0-a.b", "v1.0.0-a-b"))}
    stacks = {"dev": stack_doc({"v1.0.0-a.b": 50, "v1.0.0-a-b": 50})}
    state = load_state(write_repo(tmp_path, models, stacks, git=False))
    with pytest.raises(UserError, match="share the name 'v1-0-0-a-b'"):
        build_stack(state, "dev")


VERSIONS = ("v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0")


@st.composite
def releases(draw: st.DrawFn) -> dict[str, Any]:
    """Any release of the model that parses: weights summing to 100, optional shadow (of a version
    without live traffic), sticky and overrides (to any version, deployed or not)."""
    versions = draw(st.lists(st.sampled_from(VERSIONS), min_size=1, max_size=4, unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=len(versions) - 1, max_size=len(versions) - 1)))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    release: dict[str, Any] = {"traffic": dict(zip(versions, weights, strict=True))}
    # A shadow mirrors a version that serves no live traffic (weight 0 or not deployed).
    idle = [v for v in VERSIONS if release["traffic"].get(v, 0) == 0]
    mirrored = draw(st.booleans())
    if idle and mirrored:
        release["shadow"] = {"version": draw(st.sampled_from(idle)), "percent": draw(st.integers(1, 100))}
    if draw(st.booleans()):
        release["sticky"] = {"cookie": "model-version"}
    release["overrides"] = draw(
        st.dictionaries(st.sampled_from(["canary", "beta"]), st.sampled_from(VERSIONS))
    )
    return release


def one_model_state(release: dict[str, Any], production: bool = False) -> State:
    """A stack `any` releasing the factory model as `release`."""
    model = ModelFile.model_validate(model_doc(versions=VERSIONS))
    doc = stack_doc({}, production=production, image=PROD_IMAGE)["config"]
    doc["modelctl:releases"] = {model.name: release}
    stack = Stack(name="any", file="Pulumi.any.yaml", config=StackConfig.model_validate(doc))
    # The repository's reviewed allow-list, which the factory models' trusted types rely on.
    trusted = load_allow_list(Path(__file__).resolve().parents[1])
    return State(root=Path("."), models={model.name: model}, stacks={"any": stack}, trusted=trusted)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(before=releases(), after=releases())
def test_a_release_change_adds_or_removes_subset_rules_and_edits_none(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    """Make before break needs a subset to come and go with its own object: a rule that stays is
    never edited (so no update can drop a subset a route still names), and the rules created or
    deleted are exactly those of the versions deployed or no longer deployed."""
    old, new = (one_model_state(r) for r in (before, after))
    rules = [
        {o["metadata"]["name"]: o for o in build_stack(state, "any") if o["kind"] == "DestinationRule"}
        for state in (old, new)
    ]
    for name in rules[0].keys() & rules[1].keys():
        assert rules[0][name] == rules[1][name], name
    versions = [set(state.stack("any").config.releases["fraud-detection"].deployed()) for state in (old, new)]
    assert rules[0].keys() ^ rules[1].keys() == {
        f"fraud-detection-{subset_name(v)}" for v in versions[0] ^ versions[1]
    }


@settings(max_examples=40, deadline=None, derandomize=True)
@given(release=releases(), production=st.booleans())
def test_any_valid_release_builds_routes_that_pass_the_policies(
    release: dict[str, Any], production: bool
) -> None:
    state = one_model_state(release, production)
    stack = state.stack("any")
    objects = build_stack(state, "any")
    deployed = [o["metadata"]["labels"]["version"] for o in objects if o["kind"] == "Deployment"]
    assert deployed == stack.config.releases["fraud-detection"].deployed()
    # An override to an undeployed version is refused by the state check and by the policy alike.
    undeployed = sorted(h for h, v in release["overrides"].items() if v not in deployed)
    refused = sorted(e.key.rsplit(".", 1)[-1] for e in cross_check(state))
    assert refused == undeployed
    violations = check_objects(objects, state)
    assert {v.rule for v in violations} == ({"route-destinations"} if undeployed else set())
    assert len(violations) == len(undeployed)
    [vs] = [o for o in objects if o["kind"] == "VirtualService"]
    weighted = vs["spec"]["http"][-1]
    assert sum(d["weight"] for d in weighted["route"]) == 100
    assert all(d["weight"] > 0 for d in weighted["route"])
    assert ("mirror" in weighted) == ("shadow" in release)


def test_service_accounts_carry_the_stacks_cloud_identity(tmp_path: Path) -> None:
    models, stacks = default_docs()
    role = "arn:aws:iam::123456789012:role/models-read-dvc"
    stacks["prod"]["config"]["modelctl:environment"]["service_account_annotations"] = {
        "eks.amazonaws.com/role-arn": role
    }
    state = load_state(write_repo(tmp_path / "repo", models, stacks, git=False))
    prod_account = one(state, "prod", "ServiceAccount", "fraud-detection")
    assert prod_account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    assert "annotations" not in one(state, "dev", "ServiceAccount", "fraud-detection")["metadata"]
    deployment = objects_of(state, "prod", "Deployment", "fraud-detection")[0]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "fraud-detection"


def test_the_canary_alert_takes_its_margins_from_the_judges_margin_function(state: State) -> None:
    rule = one(state, "staging", "PrometheusRule", "fraud-detection")
    [alert] = [
        r
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "ModelCanaryWorseThanStable"
    ]
    analysis = state.stack("staging").config.releases["fraud-detection"].analysis
    assert "> on (model)\nclamp_min(" in alert["expr"]
    assert f", {analysis.error_margin:g})" in alert["expr"]
    assert f"> {latency_ratio(analysis):g}" in alert["expr"]
    # The same numbers the judge uses: at a 5% stable error ratio the margin is relative.
    assert error_margin(analysis, 0.05) == pytest.approx(analysis.error_margin_relative * 0.05)
