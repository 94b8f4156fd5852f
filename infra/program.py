"""The Pulumi shell: read the stack config through the core schema, build the objects, register them.

Only what Pulumi alone can do lives here: secret values as Outputs, dependencies that make
Pulumi wait for Deployments before shifting traffic, the optional monitoring Helm release,
and the stack's exports.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.build import build_stack
from infra.common import ModelTarget, Obj
from infra.monitoring import KUBE_PROMETHEUS_STACK, kube_prometheus_stack_values
from modelctl.core.errors import UserError, UserErrors, collect
from modelctl.core.schema import StackConfig
from modelctl.core.state import (
    CONFIG_NAMESPACE,
    STRUCTURED_KEYS,
    Stack,
    State,
    cross_check,
    find_root,
    load_state,
    parse,
    stack_file,
)

TYPED_KINDS: dict[tuple[str, str], Any] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("apps/v1", "StatefulSet"): k8s.apps.v1.StatefulSet,
    ("batch/v1", "CronJob"): k8s.batch.v1.CronJob,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.autoscaling.v2.HorizontalPodAutoscaler,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
}
PLACEHOLDER = re.compile(rf"^<secret:{CONFIG_NAMESPACE}:([A-Za-z][A-Za-z0-9_]*)>$")
CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


@dataclass
class Registered:
    """One object as registered, with the resources Pulumi must finish first."""

    obj: Obj
    resource: pulumi.CustomResource
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def main(root: Path | None = None) -> list[Registered]:
    try:
        state = state_from_config(root or find_root(Path(__file__).parent), pulumi.get_stack())
    except (UserError, UserErrors) as exc:
        raise pulumi.RunError(str(exc)) from None
    stack = state.stack(pulumi.get_stack())
    chart = monitoring_release(stack)
    registered = register(build_stack(state, stack.name), pulumi.Config(CONFIG_NAMESPACE), chart)
    export(state, stack)
    return registered


def state_from_config(root: Path, stack_name: str) -> State:
    """The repository's models with this stack's config as Pulumi holds it, checked like `load_state`."""
    repo = load_state(root)
    config = pulumi.Config(CONFIG_NAMESPACE)
    structured = {
        f"{CONFIG_NAMESPACE}:{key}": value
        for key in STRUCTURED_KEYS
        if (value := config.get_object(key)) is not None
    }
    parsed: StackConfig = parse(StackConfig, structured, stack_file(stack_name), None, prefix=("config",))
    stack = Stack(name=stack_name, file=stack_file(stack_name), config=parsed)
    state = dataclasses.replace(repo, stacks={**repo.stacks, stack_name: stack})
    collect(cross_check(state))
    return state


def monitoring_release(stack: Stack) -> k8s.helm.v3.Release | None:
    if not stack.config.environment.monitoring.install:
        return None
    pin = KUBE_PROMETHEUS_STACK
    return k8s.helm.v3.Release(
        pin.chart,
        chart=pin.chart,
        version=pin.version,
        namespace=pin.namespace,
        create_namespace=True,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=pin.repository),
        values=kube_prometheus_stack_values(),
    )


def register(objects: list[Obj], config: pulumi.Config, chart: pulumi.Resource | None) -> list[Registered]:
    registered: list[Registered] = []
    namespace: pulumi.Resource | None = None
    deployments: dict[str, list[pulumi.Resource]] = {}
    secrets: list[pulumi.Resource] = []
    for obj in objects:
        depends_on = _depends_on(obj, namespace, chart, deployments, secrets)
        resource = _resource(_with_secrets(obj, config), pulumi.ResourceOptions(depends_on=depends_on))
        registered.append(Registered(obj, resource, depends_on))
        kind = obj["kind"]
        if kind == "Namespace":
            namespace = resource
        elif kind == "Deployment":
            deployments.setdefault(obj["metadata"]["labels"]["app"], []).append(resource)
        elif kind == "Secret":
            secrets.append(resource)
    return registered


def _depends_on(
    obj: Obj,
    namespace: pulumi.Resource | None,
    chart: pulumi.Resource | None,
    deployments: Mapping[str, list[pulumi.Resource]],
    secrets: list[pulumi.Resource],
) -> list[pulumi.Resource]:
    depends: list[pulumi.Resource] = [namespace] if namespace and obj["kind"] != "Namespace" else []
    if chart and _is_custom(obj):
        depends.append(chart)  # the chart installs the monitoring CRDs
    if obj["kind"] == "VirtualService":
        # Pulumi waits for these rollouts, so traffic only moves to pods that are ready.
        depends += deployments.get(obj["metadata"]["labels"]["app"], [])
    if obj["kind"] in ("AlertmanagerConfig", "Deployment", "StatefulSet"):
        depends += secrets  # what they mount or read (the feedback Secret, the alerting credentials)
    return depends


def _is_custom(obj: Obj) -> bool:
    return (obj["apiVersion"], obj["kind"]) not in TYPED_KINDS


def _resource(obj: Obj, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    meta = obj["metadata"]
    name = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
    if _is_custom(obj):
        return k8s.apiextensions.CustomResource(
            name, api_version=obj["apiVersion"], kind=obj["kind"], metadata=meta, spec=obj["spec"], opts=opts
        )
    cls = TYPED_KINDS[(obj["apiVersion"], obj["kind"])]
    fields = {_snake(key): value for key, value in obj.items()}
    return cls(name, opts=opts, **fields)  # type: ignore[no-any-return]


def _snake(key: str) -> str:
    return CAMEL.sub("_", key).lower()


def _with_secrets(value: Any, config: pulumi.Config) -> Any:
    """The object with each secret placeholder replaced by the secret config value, as an Output."""
    if isinstance(value, dict):
        return {key: _with_secrets(item, config) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_secrets(item, config) for item in value]
    if isinstance(value, str) and (match := PLACEHOLDER.match(value)):
        return config.require_secret(match[1])
    return value


def export(state: State, stack: Stack) -> None:
    pulumi.export("namespace", stack.config.environment.namespace)
    models = {}
    for name, release in sorted(stack.config.releases.items()):
        target = ModelTarget(stack, state.model(name), release)
        models[name] = {
            "serving": release.serving(),
            "deployed": release.deployed(),
            "weights": {version: release.traffic[version] for version in release.serving()},
            "shadow": release.shadow.model_dump() if release.shadow else None,
            "hosts": [host for host in (target.host, target.external_host) if host],
        }
    pulumi.export("models", models)
