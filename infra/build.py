"""`build_stack`: every Kubernetes object of one stack, in a stable order."""

from __future__ import annotations

from collections.abc import Collection

from infra import (
    alert_rules,
    alertmanager,
    analysis_job,
    dashboard,
    feedback_store,
    monitoring,
    routing,
    workloads,
)
from infra.common import ModelTarget, Obj
from modelctl.core.contract import MeshName
from modelctl.core.state import State


def build_stack(
    state: State, stack_name: str, mesh: MeshName | None = None, models: Collection[str] | None = None
) -> list[Obj]:
    """The objects Pulumi applies and render writes: the namespace, the feedback store, each model,
    alertmanager, then the canary analysis job. `mesh` replaces the stack's monitoring.mesh
    (`modelctl up` runs Envoy as the data plane); with `models`, only those models' objects
    beside the stack's own (a model's objects depend on its record and release alone)."""
    stack = state.stack(stack_name)
    objects = [workloads.namespace(stack.config.environment.namespace, stack.name)]
    objects += feedback_store.objects(stack)
    for model_name, release in sorted(stack.config.releases.items()):
        if models is None or model_name in models:
            objects += build_model(ModelTarget(stack, state.model(model_name), release, mesh))
    objects.append(dashboard.dashboard_config_map(stack))
    objects += [obj for obj in (alertmanager.secret(stack), alertmanager.alertmanager_config(stack)) if obj]
    return objects + analysis_job.objects(stack)


def build_model(target: ModelTarget) -> list[Obj]:
    deployed = target.release.deployed()
    # Each version's subset before its Deployment, the host's rule after them: the order the
    # Pulumi program declares between them (infra/program.py).
    return [
        workloads.service_account(target),
        workloads.service(target),
        *routing.subset_rules(target),
        routing.destination_rule(target),
        *(workloads.deployment(target, version) for version in deployed),
        *(workloads.autoscaler(target, version) for version in deployed),
        workloads.disruption_budget(target),
        workloads.network_policy(target),
        routing.virtual_service(target),
        monitoring.service_monitor(target),
        alert_rules.prometheus_rule(target),
    ]
