"""Istio DestinationRules (the host's traffic policy, and one per deployed version holding its
subset) and the VirtualService (overrides, sticky, weighted).

One DestinationRule per subset makes before it breaks: Pulumi creates and updates resources
before it deletes the ones a program no longer declares, so a new version's subset exists before
a route names it and a removed version's subset goes only after the routes have left it (the
order is declared in infra/program.py). istiod merges a host's rules into one
(modelctl/core/mesh.py); Istio answers 503 to a route naming a subset it does not know
(istio/istio#8420)."""

from __future__ import annotations

import re

from infra.common import SERVICE_PORT, VERSION_HEADER, VERSION_LABEL, ModelTarget, Obj, metadata, subset_name
from modelctl.core.schema import Sticky, duration_seconds

REQUEST_TIMEOUT = "10s"
# Inference is idempotent, so retrying on a failed connection or an overloaded pod is safe.
RETRIES = {"attempts": 2, "perTryTimeout": "4s", "retryOn": "gateway-error,connect-failure,refused-stream"}


def destination_rule(target: ModelTarget) -> Obj:
    """The host's rule: the traffic policy every subset inherits, and no subset (the only rule of
    the host with a `trafficPolicy`, so the merged rule has it whichever istiod reads first)."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": metadata(target.name, target.namespace, target.labels()),
        "spec": {
            "host": target.host,
            "trafficPolicy": {
                "connectionPool": {
                    "tcp": {"maxConnections": 1000, "connectTimeout": "2s"},
                    "http": {"http1MaxPendingRequests": 1000, "http2MaxRequests": 1000},
                },
                "outlierDetection": {
                    "consecutive5xxErrors": 5,
                    "interval": "10s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 50,
                },
            },
        },
    }


def subset_rules(target: ModelTarget) -> list[Obj]:
    """One rule per deployed version, `<model>-<subset>`, holding that version's subset."""
    return [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": metadata(target.versioned_name(version), target.namespace, target.labels(version)),
            "spec": {"host": target.host, "subsets": [{"name": subset, "labels": {VERSION_LABEL: version}}]},
        }
        for subset, version in target.subsets().items()
    ]


def virtual_service(target: ModelTarget) -> Obj:
    spec: Obj = {"hosts": [target.host]}
    external = target.external_host
    if external:
        spec["hosts"].append(external)
        spec["gateways"] = [target.env.ingress.gateway, "mesh"]
    spec["http"] = [
        *_override_routes(target),
        *_mirrored([*_sticky_routes(target), _weighted_route(target)], target),
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata(target.name, target.namespace, target.labels()),
        "spec": spec,
    }


def _destination(target: ModelTarget, version: str) -> Obj:
    return {"host": target.host, "subset": subset_name(version), "port": {"number": SERVICE_PORT}}


def _route(name: str, match: list[Obj], route: list[Obj]) -> Obj:
    return {"name": name, "match": match, "route": route, "timeout": REQUEST_TIMEOUT, "retries": RETRIES}


def _override_routes(target: ModelTarget) -> list[Obj]:
    return [
        _route(
            f"override-{subset_name(version)}-{index}",
            [{"headers": {VERSION_HEADER: {"exact": value}}}],
            [{"destination": _destination(target, version)}],
        )
        for index, (value, version) in enumerate(sorted(target.release.overrides.items()))
    ]


def _sticky_routes(target: ModelTarget) -> list[Obj]:
    """Requests carrying the cookie a weighted route set go back to the same version."""
    sticky = target.release.sticky
    if sticky is None:
        return []
    return [
        _route(
            f"sticky-{subset_name(version)}",
            [{"headers": {"cookie": {"regex": _cookie_regex(sticky.cookie, version)}}}],
            [{"destination": _destination(target, version)}],
        )
        for version in target.release.serving()
    ]


def _cookie_regex(cookie: str, version: str) -> str:
    # RE2 (Envoy) syntax: the cookie may be anywhere in the header, between '; ' separators.
    return rf"^(.*;\s*)?{re.escape(cookie)}={re.escape(version)}(;.*)?$"


def _weighted_route(target: ModelTarget) -> Obj:
    release = target.release
    destinations = []
    for version in release.serving():
        destination: Obj = {"destination": _destination(target, version), "weight": release.traffic[version]}
        if release.sticky:
            destination["headers"] = {
                "response": {"add": {"set-cookie": _set_cookie(release.sticky, version)}}
            }
        destinations.append(destination)
    return {"name": "weighted", "route": destinations, "timeout": REQUEST_TIMEOUT, "retries": RETRIES}


def _mirrored(routes: list[Obj], target: ModelTarget) -> list[Obj]:
    """The user routes, each mirroring to the shadow: Istio mirrors only the requests of the route
    holding `mirror`, so on the weighted route alone returning users (sticky cookie) would never
    reach the shadow. Header overrides pin one version on purpose and are not mirrored."""
    shadow = target.release.shadow
    if shadow is None:
        return routes
    mirror = {"mirror": _destination(target, shadow.version), "mirrorPercentage": {"value": shadow.percent}}
    return [{**route, **mirror} for route in routes]


def _set_cookie(sticky: Sticky, version: str) -> str:
    max_age = int(duration_seconds(sticky.max_age))
    return f"{sticky.cookie}={version}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
