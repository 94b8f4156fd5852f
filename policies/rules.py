"""Policy rules: plain functions over (kind, object), plus the State where a rule needs the registry.

Each rule returns the problems it finds as sentences; an empty list means the object passes.
The CrossGuard pack (`policies/pack.py`) and `modelctl check --stack` run the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from modelctl.core.contract import APP_LABEL, STACK_LABEL, VERSION_HEADER, subset_name
from modelctl.core.credentials import dotted, find_credentials
from modelctl.core.schema import ModelFile
from modelctl.core.state import Stack, State

Obj = dict[str, Any]
POD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"})
# Pods that serve (and so need probes), not ones that run to completion.
SERVING_KINDS = POD_KINDS - {"Job", "CronJob"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


ANY_KIND = frozenset({"*"})


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    fix: str
    kinds: frozenset[str]  # ANY_KIND for every kind
    check: Callable[[Obj, State], list[str]]

    def applies_to(self, kind: str) -> bool:
        return kind in self.kinds or self.kinds == ANY_KIND


@dataclass(frozen=True)
class StackRule:
    name: str
    description: str
    fix: str
    check: Callable[[list[Obj], State], list[str]]


@dataclass(frozen=True)
class Violation:
    rule: str
    kind: str
    name: str
    message: str
    fix: str

    def __str__(self) -> str:
        subject = f"{self.kind} {self.name}: " if self.name else ""
        return f"{self.rule}: {subject}{self.message}"


def object_name(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta['namespace']}/{meta.get('name', '?')}" if meta.get("namespace") else meta.get("name", "?")


def _stack_of(obj: Obj, state: State) -> Stack | None:
    name = ((obj.get("metadata") or {}).get("labels") or {}).get(STACK_LABEL)
    return state.stacks.get(name) if name else None


def _model_of(obj: Obj, state: State) -> ModelFile | None:
    app = ((obj.get("metadata") or {}).get("labels") or {}).get(APP_LABEL)
    return state.models.get(app) if app else None


def _subset_versions(model: ModelFile) -> dict[str, str]:
    return {subset_name(version): version for version in model.versions}


# ---------------------------------------------------------------- routing


def _routes(vs: Obj) -> Iterator[tuple[Obj, bool]]:
    """Each HTTP route with whether it only serves requests that ask for a version by header."""
    for route in (vs.get("spec") or {}).get("http") or []:
        matches = route.get("match") or []
        by_header = bool(matches) and all(VERSION_HEADER in (m.get("headers") or {}) for m in matches)
        yield route, by_header


def traffic_weights(vs: Obj, state: State) -> list[str]:
    """Weights of each route sum to 100, and no destination names a revoked version.

    A deprecated version may keep the traffic it has (and stay a rollback target); that it
    gains none is a rule about a change, checked by the release commands and `check --base`.
    """
    problems = []
    model = _model_of(vs, state)
    for route, _ in _routes(vs):
        destinations = route.get("route") or []
        name = route.get("name", "unnamed")
        weights = [d.get("weight") for d in destinations]
        total = sum(w or 0 for w in weights)
        if (len(destinations) > 1 or any(w is not None for w in weights)) and total != 100:
            problems.append(f"route {name} has weights summing to {total:g}, not 100")
        if model is None:
            problems.append(f"route {name} belongs to no registered model (label 'app')")
            continue
        subsets = _subset_versions(model)
        mirror = [route["mirror"]] if route.get("mirror") else []
        for destination in [d.get("destination") or {} for d in destinations] + mirror:
            version = subsets.get(destination.get("subset", ""))
            if version is None:
                problems.append(f"route {name} sends traffic to unknown subset {destination.get('subset')!r}")
            elif model.versions[version].status == "revoked":
                problems.append(f"route {name} sends traffic to {version}, which is revoked")
    return problems


def production_gates(vs: Obj, state: State) -> list[str]:
    """On production stacks, live traffic only reaches versions that pass the model's gates."""
    stack, model = _stack_of(vs, state), _model_of(vs, state)
    if stack is None or model is None or not stack.config.environment.production:
        return []
    subsets = _subset_versions(model)
    problems = []
    for route, by_header in _routes(vs):
        for destination in route.get("route") or []:
            version = subsets.get((destination.get("destination") or {}).get("subset", ""))
            if by_header or version is None or destination.get("weight", 100) == 0:
                continue
            failed = model.versions[version].failed_gates(model.gates)
            if failed:
                problems.append(
                    f"production route {route.get('name')} serves {version}, which fails {'; '.join(failed)}"
                )
    return problems


def _destinations(vs: Obj) -> Iterator[tuple[str, Obj]]:
    """(route name, destination) for every place a VirtualService sends requests: each route's
    destinations (header overrides, sticky and weighted routes) and its mirror."""
    for route in (vs.get("spec") or {}).get("http") or []:
        name = route.get("name", "unnamed")
        for destination in route.get("route") or []:
            yield name, destination.get("destination") or {}
        if route.get("mirror"):
            yield f"{name} (mirror)", route["mirror"]


def _namespace(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def _service_of(host: str, namespace: str) -> tuple[str, str]:
    """(name, namespace) of the Service a mesh host names: `name`, `name.ns` or `name.ns.svc.<domain>`."""
    parts = host.split(".")
    return parts[0], parts[1] if len(parts) > 1 else namespace


def route_destinations(objects: list[Obj], state: State) -> list[str]:
    """Every destination of every VirtualService has a DestinationRule subset and a Deployment whose
    pods carry the subset's labels and the Service's selector; Istio answers 503 to the rest."""
    by_kind: dict[str, list[Obj]] = {}
    for obj in objects:
        by_kind.setdefault(obj.get("kind", ""), []).append(obj)
    subsets = {
        (*_service_of((rule.get("spec") or {}).get("host", ""), _namespace(rule)), s.get("name")): s.get(
            "labels"
        )
        or {}
        for rule in by_kind.get("DestinationRule", [])
        for s in (rule.get("spec") or {}).get("subsets") or []
    }
    selectors = {
        (service["metadata"].get("name"), _namespace(service)): (service.get("spec") or {}).get("selector")
        or {}
        for service in by_kind.get("Service", [])
    }
    # Pods by each of their labels, so a destination looks only at the pods carrying one of its labels.
    pods: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for kind in POD_KINDS:
        for workload in by_kind.get(kind, []):
            on_pod = _pod_labels(workload)
            for key in [(_namespace(workload),), *((_namespace(workload), *item) for item in on_pod.items())]:
                pods.setdefault(key, []).append(on_pod)
    problems = []
    for vs in by_kind.get("VirtualService", []):
        for route, destination in _destinations(vs):
            name, namespace = _service_of(destination.get("host", ""), _namespace(vs))
            subset = destination.get("subset")
            where = f"VirtualService {object_name(vs)} route {route} sends traffic to {name}"
            if subset is None:
                continue
            labels = subsets.get((name, namespace, subset))
            if labels is None:
                problems.append(f"{where} subset {subset!r}, which no DestinationRule defines")
                continue
            wanted = {**selectors.get((name, namespace), {}), **labels}
            key = (namespace, *next(iter(wanted.items()))) if wanted else (namespace,)
            if not any(wanted.items() <= pod.items() for pod in pods.get(key, [])):
                problems.append(f"{where} subset {subset!r}, whose labels select no Deployment's pods")
    return problems


def host_rules_merge(objects: list[Obj], state: State) -> list[str]:
    """The DestinationRules of one host merge without loss: istiod keeps the first definition of a
    subset name and the first traffic policy (modelctl/core/mesh.py), silently dropping the rest."""
    by_host: dict[tuple[str, str], list[Obj]] = {}
    for rule in (o for o in objects if o.get("kind") == "DestinationRule"):
        host = _service_of((rule.get("spec") or {}).get("host", ""), _namespace(rule))
        by_host.setdefault(host, []).append(rule)
    problems = []
    for (name, namespace), rules in sorted(by_host.items()):
        where = f"the DestinationRules of {name} in {namespace}"
        defined: dict[str, str] = {}
        for rule in rules:
            for subset in (rule.get("spec") or {}).get("subsets") or []:
                first = defined.setdefault(subset.get("name", ""), object_name(rule))
                if first != object_name(rule):
                    problems.append(
                        f"{where}: subset {subset.get('name')!r} is defined by {first} and again by {object_name(rule)}"
                    )
        policies = [object_name(r) for r in rules if "trafficPolicy" in (r.get("spec") or {})]
        if len(policies) > 1:
            problems.append(
                f"{where}: {', '.join(policies)} each set a trafficPolicy; istiod applies only the oldest"
            )
    return problems


# ---------------------------------------------------------------- pods


def _pod_labels(obj: Obj) -> dict[str, str]:
    if obj.get("kind") == "Pod":
        return (obj.get("metadata") or {}).get("labels") or {}
    return (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def _pod_spec(obj: Obj) -> Obj:
    if obj.get("kind") == "Pod":
        return obj.get("spec") or {}
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def _containers(obj: Obj) -> Iterator[tuple[Obj, bool]]:
    """Every container of the pod, with whether it is an init container."""
    spec = _pod_spec(obj)
    for container in spec.get("initContainers") or []:
        yield container, True
    for container in spec.get("containers") or []:
        yield container, False


def resource_limits(obj: Obj, state: State) -> list[str]:
    return [
        f"container {c.get('name')} has no {resource} limit"
        for c, _ in _containers(obj)
        for resource in ("cpu", "memory")
        if resource not in ((c.get("resources") or {}).get("limits") or {})
    ]


def health_probes(obj: Obj, state: State) -> list[str]:
    return [
        f"container {c.get('name')} has no {probe}"
        for c, init in _containers(obj)
        if not init
        for probe in ("readinessProbe", "livenessProbe")
        if not c.get(probe)
    ]


def non_root(obj: Obj, state: State) -> list[str]:
    pod = _pod_spec(obj).get("securityContext") or {}
    problems = []
    for container, _ in _containers(obj):
        context = {
            **pod,
            **{k: v for k, v in (container.get("securityContext") or {}).items() if v is not None},
        }
        if context.get("runAsNonRoot") is not True:
            problems.append(f"container {container.get('name')} does not set runAsNonRoot: true")
        if context.get("runAsUser") == 0:
            problems.append(f"container {container.get('name')} runs as user 0")
    return problems


def read_only_root(obj: Obj, state: State) -> list[str]:
    return [
        f"container {c.get('name')} does not set readOnlyRootFilesystem: true"
        for c, _ in _containers(obj)
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True
    ]


def pinned_images(obj: Obj, state: State) -> list[str]:
    """No `latest` (or missing) tags anywhere; digests on production stacks."""
    stack = _stack_of(obj, state)
    production = stack is not None and stack.config.environment.production
    problems = []
    for container, _ in _containers(obj):
        image = container.get("image") or ""
        repository, _, tag = image.split("@")[0].rpartition(":")
        if "/" in tag or not repository:
            tag = ""  # the colon belonged to a registry port, so there is no tag
        if not DIGEST.search(image) and tag in ("", "latest"):
            problems.append(f"container {container.get('name')} image {image!r} has no tag or uses 'latest'")
        elif production and not DIGEST.search(image):
            problems.append(
                f"container {container.get('name')} image {image!r} is not pinned by @sha256 digest"
            )
    return problems


# ---------------------------------------------------------------- secrets

# Where credentials belong: a Secret's values (placeholders in render, Pulumi secrets in CrossGuard).
SECRET_FIELDS = ("data", "stringData")


def no_plaintext_secrets(obj: Obj, state: State) -> list[str]:
    """No string of any object looks like a credential, outside a Secret's values.

    Shapes and key names are `modelctl.core.credentials`'; a key naming where a secret is kept
    (`secretKeyRef`, `*_file`, `*Secret`) is a reference, never a finding.
    """
    document = {k: v for k, v in obj.items() if not (obj.get("kind") == "Secret" and k in SECRET_FIELDS)}
    return [f"{dotted(path)} looks like {what}" for path, what in find_credentials(document)]


# ---------------------------------------------------------------- stack


def monitored_models(objects: list[Obj], state: State) -> list[str]:
    """Every served model has a ServiceMonitor selecting its pods and a PrometheusRule."""
    served = {
        (o["metadata"].get("namespace"), label)
        for o in objects
        if o.get("kind") in POD_KINDS and (label := (o["metadata"].get("labels") or {}).get(APP_LABEL))
    }
    monitored = {
        (
            o["metadata"].get("namespace"),
            ((o.get("spec") or {}).get("selector") or {}).get("matchLabels", {}).get(APP_LABEL),
        )
        for o in objects
        if o.get("kind") == "ServiceMonitor"
    }
    ruled = {
        (o["metadata"].get("namespace"), (o["metadata"].get("labels") or {}).get(APP_LABEL))
        for o in objects
        if o.get("kind") == "PrometheusRule"
    }
    problems = []
    for namespace, model in sorted(served, key=lambda item: (item[0] or "", item[1])):
        if (namespace, model) not in monitored:
            problems.append(f"model {model} in {namespace} has no ServiceMonitor")
        if (namespace, model) not in ruled:
            problems.append(f"model {model} in {namespace} has no PrometheusRule")
    return problems


RULES = [
    Rule(
        "traffic-weights",
        "Route weights sum to 100 and name no revoked version.",
        "set traffic weights that add up to 100, on versions that are not revoked",
        frozenset({"VirtualService"}),
        traffic_weights,
    ),
    Rule(
        "production-gates",
        "Production traffic only reaches versions passing the promotion gates.",
        "serve a version that passes the gates in models/<model>/model.yaml",
        frozenset({"VirtualService"}),
        production_gates,
    ),
    Rule(
        "resource-limits",
        "Every container has CPU and memory limits.",
        "set resources.limits.cpu and resources.limits.memory",
        POD_KINDS,
        resource_limits,
    ),
    Rule(
        "health-probes",
        "Every serving container has readiness and liveness probes.",
        "add readinessProbe and livenessProbe",
        SERVING_KINDS,
        health_probes,
    ),
    Rule(
        "non-root",
        "Every container runs as a non-root user.",
        "set securityContext.runAsNonRoot: true and a non-zero runAsUser",
        POD_KINDS,
        non_root,
    ),
    Rule(
        "read-only-root-fs",
        "Every container has a read-only root filesystem.",
        "set securityContext.readOnlyRootFilesystem: true and mount an emptyDir where it writes",
        POD_KINDS,
        read_only_root,
    ),
    Rule(
        "pinned-images",
        "No 'latest' tags; production images are pinned by digest.",
        "use a versioned tag, and on production stacks name:tag@sha256:<digest>",
        POD_KINDS,
        pinned_images,
    ),
    Rule(
        "no-plaintext-secrets",
        "No value of any object looks like a credential, outside a Secret's values.",
        "keep credentials in a Secret set with 'pulumi config set --secret' and reference it",
        ANY_KIND,
        no_plaintext_secrets,
    ),
]
STACK_RULES = [
    StackRule(
        "route-destinations",
        "Every route destination and mirror has a DestinationRule subset and a Deployment.",
        "deploy the version (a 'traffic' weight, 0 to keep it warm) or route to a deployed one",
        route_destinations,
    ),
    StackRule(
        "host-rules-merge",
        "The DestinationRules of one host define each subset once and one trafficPolicy between them.",
        "keep the traffic policy on the host's rule and each subset in its version's rule",
        host_rules_merge,
    ),
    StackRule(
        "monitored-models",
        "Every served model has a ServiceMonitor and a PrometheusRule.",
        "render the model's ServiceMonitor and PrometheusRule with the same 'app' label",
        monitored_models,
    ),
]


def check_object(obj: Obj, state: State, rules: Iterable[Rule] = RULES) -> list[Violation]:
    kind = obj.get("kind", "")
    return [
        Violation(rule.name, kind, object_name(obj), message, rule.fix)
        for rule in rules
        if rule.applies_to(kind)
        for message in rule.check(obj, state)
    ]


def check_objects(objects: list[Obj], state: State) -> list[Violation]:
    """Every rule on every object, then the rules over the whole set."""
    violations = [v for obj in objects for v in check_object(obj, state)]
    for rule in STACK_RULES:
        violations += [
            Violation(rule.name, "", "", message, rule.fix) for message in rule.check(objects, state)
        ]
    return violations
