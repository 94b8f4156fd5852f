"""The Pulumi program under `pulumi.runtime.set_mocks`: it registers exactly the rendered objects,
secrets only as Pulumi secrets, and the dependencies that make traffic wait for rollouts."""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
import yaml
from pulumi.runtime import rpc

from infra import program
from infra.build import build_stack
from infra.monitoring import KUBE_PROMETHEUS_STACK
from infra.program import Registered, main
from modelctl.core.state import Stack, load_state
from policies.pack import HELM_RELEASE, as_object
from tests.factories import full_docs, write_repo

ALERTING_SECRETS = {
    "smtpPassword": "smtp-pass",
    "slackUrl": "https://hooks.example.com/s",
    "pagerToken": "pager-token",
}
FEEDBACK_SECRETS = {"receiptKeys": "k" * 64, "feedbackStorePassword": "p" * 32}
SECRET_VALUES = {
    **ALERTING_SECRETS,
    **FEEDBACK_SECRETS,
    "analysisDeployKey": "-----BEGIN OPENSSH PRIVATE KEY-----",
}
Obj = dict[str, Any]


class Recorder(pulumi.runtime.Mocks):
    """Keeps every resource the program registers, as the engine would receive it."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


@dataclass
class Run:
    recorder: Recorder
    registered: list[Registered]
    exports: dict[str, Any] = field(default_factory=dict)


def run_program(
    root: Path,
    stack: str,
    monkeypatch: pytest.MonkeyPatch,
    secrets: dict[str, str] = SECRET_VALUES,
    releases: Any = None,
) -> Run:
    """Run infra.program for `stack` with its config (and these secret values) as Pulumi holds it."""
    config = load_yaml_config(root, stack)
    if releases is not None:
        config["modelctl:releases"] = json.dumps(releases)
    config |= {f"modelctl:{key}": value for key, value in secrets.items()}
    run = Run(Recorder(), [])
    monkeypatch.setattr(pulumi, "export", run.exports.__setitem__)
    pulumi.runtime.set_mocks(run.recorder, project="modelctl", stack=stack, preview=False)
    pulumi.runtime.set_all_config(config, secret_keys=[f"modelctl:{key}" for key in secrets])

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[list[str]]:
        run.registered.extend(main(root))
        return pulumi.Output.all(*(r.resource.urn for r in run.registered))

    program()
    return run


def load_yaml_config(root: Path, stack: str) -> dict[str, str]:
    doc = yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text())
    return {
        key: json.dumps(value)
        for key, value in doc["config"].items()
        if key.endswith(("environment", "releases"))
    }


def reveal(value: Any, secrets: list[Any]) -> Any:
    """The value with Pulumi's secret wrappers removed; wrapped values are appended to `secrets`."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            secrets.append(value["value"])
            return reveal(value["value"], secrets)
        return {key: reveal(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [reveal(item, secrets) for item in value]
    return value


def with_placeholders(obj: Obj) -> Obj:
    text = json.dumps(obj)
    for key, value in SECRET_VALUES.items():
        text = text.replace(json.dumps(value)[1:-1], f"<secret:modelctl:{key}>")
    result: Obj = json.loads(text)
    return result


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repo(tmp_path_factory.mktemp("full"), *full_docs(), git=False)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_program_registers_exactly_the_rendered_objects(
    stack: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_program(root, stack, monkeypatch)
    registered = []
    for args in run.recorder.resources:
        obj = as_object(args.typ, reveal(args.inputs, []))
        if obj is not None:
            registered.append(with_placeholders(obj))
    # The engine receives registrations concurrently, so compare them in a canonical order.
    assert sorted(registered, key=identity) == sorted(build_stack(load_state(root), stack), key=identity)


def identity(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def test_secret_values_are_registered_only_as_pulumi_secrets(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_program(root, "prod", monkeypatch)
    secrets = {
        r.inputs["metadata"]["name"]: r
        for r in run.recorder.resources
        if r.typ == "kubernetes:core/v1:Secret"
    }
    expected = {
        "modelctl-alerting": ALERTING_SECRETS,
        "modelctl-feedback": {
            "receipt-keys": FEEDBACK_SECRETS["receiptKeys"],
            "store-password": FEEDBACK_SECRETS["feedbackStorePassword"],
        },
    }
    assert set(secrets) == set(expected)
    for name, values in expected.items():
        wrapped: list[Any] = []
        plain = reveal(secrets[name].inputs, wrapped)
        assert plain["stringData"] == values
        assert wrapped == [values], "stringData must travel as a Pulumi secret"
    others = json.dumps([r.inputs for r in run.recorder.resources if r not in secrets.values()])
    assert not any(value in others for value in SECRET_VALUES.values())


def test_a_missing_secret_names_the_config_command(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {k: v for k, v in SECRET_VALUES.items() if k != "pagerToken"}
    with pytest.raises(pulumi.ConfigMissingError, match="modelctl:pagerToken"):
        run_program(root, "prod", monkeypatch, secrets=secrets)


def test_traffic_moves_only_after_the_deployments_it_routes_to(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_program(root, "prod", monkeypatch)
    by_resource = {id(r.resource): r for r in run.registered}
    [vs] = [
        r
        for r in run.registered
        if r.obj["kind"] == "VirtualService" and r.obj["metadata"]["name"] == "fraud-detection"
    ]
    waited = {by_resource[id(d)].obj["metadata"]["name"] for d in vs.depends_on if id(d) in by_resource}
    assert waited >= {"fraud-detection-v1-0-0", "fraud-detection-v1-1-0", "fraud-detection-v1-2-0"}
    assert not any(name.startswith("churn") and "deploy" in name for name in waited)
    [config] = [r for r in run.registered if r.obj["kind"] == "AlertmanagerConfig"]
    assert [
        by_resource[id(d)].obj["metadata"]["name"] for d in config.depends_on if id(d) in by_resource
    ] == [
        "models-prod",
        "modelctl-feedback",
        "modelctl-alerting",
    ]


def test_monitoring_install_adds_the_pinned_chart_before_the_custom_resources(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_program(root, "prod", monkeypatch)
    [release] = [r for r in run.recorder.resources if r.typ == HELM_RELEASE]
    assert release.inputs["chart"] == KUBE_PROMETHEUS_STACK.chart
    assert release.inputs["version"] == KUBE_PROMETHEUS_STACK.version
    custom = [
        r for r in run.registered if r.obj["kind"] in {"ServiceMonitor", "PrometheusRule", "VirtualService"}
    ]
    assert all(any(isinstance(d, k8s.helm.v3.Release) for d in r.depends_on) for r in custom)
    dev = run_program(root, "dev", monkeypatch)
    assert not [r for r in dev.recorder.resources if r.typ == HELM_RELEASE]


def test_exports_name_served_versions_weights_and_hosts(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_program(root, "prod", monkeypatch)
    assert run.exports["namespace"] == "models-prod"
    fraud = run.exports["models"]["fraud-detection"]
    assert fraud["serving"] == ["v1.1.0"]
    assert fraud["weights"] == {"v1.1.0": 100}
    assert fraud["deployed"] == ["v1.0.0", "v1.1.0", "v1.2.0"]
    assert fraud["shadow"] == {"version": "v1.2.0", "percent": 10.0}
    assert fraud["hosts"] == [
        "fraud-detection.models-prod.svc.cluster.local",
        "fraud-detection.models.example.com",
    ]


def test_invalid_stack_config_fails_with_one_line(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    releases = {"fraud-detection": {"traffic": {"v1.1.0": 90, "v1.2.0": 20}}}
    with pytest.raises(pulumi.RunError) as caught:
        run_program(root, "dev", monkeypatch, releases=releases)
    assert str(caught.value).count("\n") == 0
    assert "weights sum to 110, not 100" in str(caught.value)


ROOT = Path(__file__).resolve().parents[1]


def run_entry_point(root: Path, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Run `infra/__main__.py` as Pulumi starts it (`main: infra/`); the kinds it registers."""
    secrets = {key: f"https://hooks.example.com/{key}" for key in stack.config.environment.secret_keys()}
    config = load_yaml_config(root, stack.name) | {f"modelctl:{k}": v for k, v in secrets.items()}
    recorder = Recorder()
    monkeypatch.setattr(program, "find_root", lambda start: root)
    monkeypatch.setattr(pulumi, "export", lambda name, value: None)
    pulumi.runtime.set_mocks(recorder, project="modelctl", stack=stack.name, preview=False)
    pulumi.runtime.set_all_config(config, secret_keys=[f"modelctl:{key}" for key in secrets])

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def entry() -> None:
        runpy.run_path(str(ROOT / "infra"), run_name="__main__")

    entry()
    return {args.typ.rsplit(":", 1)[-1] for args in recorder.resources}


def test_pulumis_entry_point_runs_the_program(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = run_entry_point(root, load_state(root).stack("staging"), monkeypatch)
    assert {"Namespace", "Deployment", "VirtualService", "PrometheusRule", "AlertmanagerConfig"} <= kinds


def test_the_program_runs_on_each_committed_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    state = load_state(ROOT)
    if not state.stacks:
        pytest.skip("the repository has no Pulumi.<stack>.yaml yet")
    for stack in state.stacks.values():
        kinds = run_entry_point(ROOT, stack, monkeypatch)
        assert {"Namespace", "Deployment", "VirtualService", "PrometheusRule"} <= kinds, stack.name
