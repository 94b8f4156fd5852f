"""The CrossGuard side: each rule of `policies.rules` as a Pulumi policy over the resources' inputs."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from modelctl.core.state import State, find_root, load_state
from policies.rules import RULES, STACK_RULES, Obj, Rule, StackRule

PACK_NAME = "modelctl"
KUBERNETES = "kubernetes:"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


@cache
def repository_state() -> State:
    """The desired state of the repository holding this pack (the registry and stack settings)."""
    return load_state(find_root(Path(__file__).parent))


def as_object(resource_type: str, props: Mapping[str, Any]) -> Obj | None:
    """The Kubernetes object behind a pulumi_kubernetes resource's inputs, or None for other types."""
    if not resource_type.startswith(KUBERNETES) or resource_type == HELM_RELEASE:
        return None
    _, group_version, kind = resource_type.split(":")
    group, _, version = group_version.rpartition("/")
    obj: Obj = _plain(props)
    obj.setdefault("apiVersion", version if group == "core" else group_version)
    obj.setdefault("kind", kind)
    obj.setdefault("metadata", {})
    return obj


def _plain(value: Any) -> Any:
    """Plain dicts and lists, with whole floats back to ints (Pulumi's wire format has no ints)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _resource_policy(rule: Rule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        obj = as_object(args.resource_type, args.props)
        if obj is None or not rule.applies_to(obj["kind"]):
            return
        for message in rule.check(obj, repository_state()):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def _stack_policy(rule: StackRule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        objects = [obj for r in args.resources if (obj := as_object(r.resource_type, r.props)) is not None]
        for message in rule.check(objects, repository_state()):
            report_violation(message, None)

    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def pack_policies() -> list[Policy]:
    return [*(_resource_policy(rule) for rule in RULES), *(_stack_policy(rule) for rule in STACK_RULES)]
