"""Envoy as the data plane: the rendered VirtualServices and DestinationRules, translated as istiod
translates them for a sidecar (istio/istio `pilot/pkg/networking/core/route/route.go`,
`route/retry/retry.go`, `cluster_builder.go`, `cluster_traffic_policy.go`,
`pilot/pkg/model/destination_rule.go`).

| Istio                                        | Envoy (what istiod writes)                                   |
|----------------------------------------------|--------------------------------------------------------------|
| VirtualService `hosts`                       | a virtual host, its `domains` the hosts                      |
| `http[]` in order, one route per `match[]`   | routes in order (first match wins), `name` the route's       |
| `match[].headers.H.exact/prefix/regex`       | `string_match` exact / prefix / `safe_regex` (RE2, full match)|
| `route[].destination` host/subset/port       | cluster `outbound\\|<port>\\|<subset>\\|<host>`              |
| several `route[]` with `weight`              | `weighted_clusters` (weight 0 left out)                      |
| `route[].headers`, `http[].headers`          | `request/response_headers_to_add` (set: overwrite, add:      |
|                                              | append), `..._to_remove`; on the cluster weight when weighted|
| `mirror` + `mirrorPercentage`                | `request_mirror_policies`, runtime fraction per million      |
| `retries` attempts/perTryTimeout/retryOn     | `retry_policy` (num_retries, previous_hosts predicate unless |
|                                              | hashing, status codes into `retriable_status_codes`)         |
| `timeout`                                    | route `timeout` (absent: 0, no timeout)                      |
| `fault.abort` / `fault.delay`                | per-route `envoy.filters.http.fault` config (absent share: 0)|
| DestinationRule subset                       | a STATIC cluster with one endpoint per ready replica         |
| `trafficPolicy.connectionPool`               | `circuit_breakers` (unset limits: 2^32-1), `connect_timeout`,|
|                                              | `common_http_protocol_options` (idle timeout, requests/conn) |
| `trafficPolicy.outlierDetection`             | `outlier_detection` (success rate off), panic threshold =    |
|                                              | minHealthPercent (0 by default: no panic routing)            |
| `trafficPolicy.loadBalancer.simple`          | `lb_policy` (default LEAST_REQUEST)                          |
| `loadBalancer.consistentHash`                | route `hash_policy` + RING_HASH (or MAGLEV) cluster          |
| subset `trafficPolicy`                       | replaces the rule's field by field (MergeTrafficPolicy)      |
| several DestinationRules of one host         | merged: subsets concatenated (first of a name wins), the     |
|                                              | first rule's top-level traffic policy kept                   |

Beyond istiod: every route destination adds `x-model-version: <its version>` to the answer (the
router adds route headers to its own error answers too, so a caller learns which version's
cluster failed), and Envoy's own answers (no route, no healthy upstream, timeout, reset, fault
abort) are JSON in the servers' error shape `{"error": "..."}` (`local_reply_config`). A field
not translated here is refused with one line (`Unsupported`), never ignored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from modelctl.core.contract import VERSION_HEADER
from modelctl.core.schema import duration_seconds

Obj = dict[str, Any]
ROUTE_CONFIG = "modelctl"
# Istio's MeshConfig defaults: connectTimeout 10s; unset circuit-breaker limits are 2^32-1.
MESH_CONNECT_TIMEOUT = "10s"
UNLIMITED = 2**32 - 1
# Istio's bootstrap regexes (pkg/bootstrap/testdata/*_golden.json: the cluster's alt_stat_name
# ends in ';' so a name holding dots is one tag; use_all_default_tags off) under Envoy's default
# tag names, so the labels are `envoy_cluster_name`, `envoy_response_code` as Envoy documents them.
STATS_TAGS = [
    {"tag_name": "envoy.cluster_name", "regex": r"^cluster(\.(.+);)"},
    {"tag_name": "envoy.response_code", "regex": r"_rq(_(\d{3}))$"},
    {"tag_name": "envoy.response_code_class", "regex": r"_rq(_(\dxx))$"},
]
RETRY_DEFAULT_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
PREVIOUS_HOSTS = {
    "name": "envoy.retry_host_predicates.previous_hosts",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    },
}
VS_ROUTE = {"name", "match", "route", "timeout", "retries", "mirror", "mirrorPercentage", "fault", "headers"}
DR_POLICY = {"connectionPool", "outlierDetection", "loadBalancer"}
# Envoy's own answers, by response flag (Envoy's access-log RESPONSE_FLAGS), as JSON errors.
LOCAL_REPLIES = [
    ("NR", "no route of a VirtualService matches host %REQ(:AUTHORITY)% and path %REQ(:PATH)%"),
    ("UH", "no healthy upstream: every endpoint of %UPSTREAM_CLUSTER_RAW% is down or ejected"),
    ("UF", "upstream connect error: no endpoint of %UPSTREAM_CLUSTER_RAW% accepted the connection"),
    ("UT", "upstream request timeout: %UPSTREAM_CLUSTER_RAW% did not answer within the route's timeout"),
    ("UO", "upstream overflow: %UPSTREAM_CLUSTER_RAW%'s connection pool is full (circuit breaker)"),
    ("URX", "upstream retry limit exceeded on %UPSTREAM_CLUSTER_RAW%"),
    ("UC", "upstream connection terminated by %UPSTREAM_CLUSTER_RAW%"),
    ("UR", "upstream reset by %UPSTREAM_CLUSTER_RAW%"),
    ("FI", "fault injected by route %ROUTE_NAME%"),
]


class Unsupported(ValueError):
    """A field of a rendered object the local translation does not implement (one line)."""


@dataclass(frozen=True)
class Routed:
    """One VirtualService, the DestinationRules of its hosts (in creation order, as istiod merges
    them), the Service port its destinations use, and each subset's endpoints ("127.0.0.1:port")."""

    virtual_service: Obj
    destination_rules: list[Obj]
    port: int
    endpoints: dict[str, list[str]]


def cluster_name(port: int, subset: str, host: str) -> str:
    """Istio's outbound cluster name (`model.BuildSubsetKey`)."""
    return f"outbound|{port}|{subset}|{host}"


def merged_rule(rules: list[Obj]) -> Obj:
    """Several DestinationRules of one host as istiod merges them (`mergeDestinationRule`): the
    subsets concatenated, the first of a name kept; the first top-level traffic policy kept."""
    merged = copy.deepcopy(rules[0])
    spec = merged["spec"]
    for rule in rules[1:]:
        names = {s["name"] for s in spec.get("subsets", [])}
        spec.setdefault("subsets", []).extend(
            copy.deepcopy(s) for s in rule["spec"].get("subsets", []) if s["name"] not in names
        )
        if "trafficPolicy" not in spec and "trafficPolicy" in rule["spec"]:
            spec["trafficPolicy"] = copy.deepcopy(rule["spec"]["trafficPolicy"])
    return merged


def subset_versions(rule: Obj) -> dict[str, str]:
    """Subset name -> the `version` label it selects."""
    return {s["name"]: s["labels"]["version"] for s in rule["spec"].get("subsets", [])}


# ---------------------------------------------------------------------------- resources


def resources(routed: list[Routed]) -> tuple[list[Obj], Obj]:
    """(the clusters, the RouteConfiguration `modelctl`) of the gateway, as xDS resources.

    Raises
    ------
    Unsupported
        naming the object and the field the translation does not implement.
    """
    clusters: dict[str, Obj] = {}
    hosts = []
    for item in routed:
        translation = _Translation(item)
        clusters.update(translation.clusters())
        hosts.append(translation.virtual_host())
    route_config = {
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": ROUTE_CONFIG,
        "virtual_hosts": hosts,
    }
    return [clusters[name] for name in sorted(clusters)], route_config


class _Translation:
    def __init__(self, routed: Routed) -> None:
        self.routed = routed
        self.vs = routed.virtual_service
        self.name = f"VirtualService {self.vs['metadata']['name']}"
        if not routed.destination_rules:
            raise Unsupported(f"{self.name}: no DestinationRule names host {self.vs['spec']['hosts'][0]}")
        self.rule = merged_rule(routed.destination_rules)
        self.rule_name = f"DestinationRule {self.rule['metadata']['name']}"
        self.host = self.rule["spec"]["host"]
        self.versions = subset_versions(self.rule)
        _only(self.vs["spec"], {"hosts", "gateways", "http"}, f"{self.name}: spec")
        _only(self.rule["spec"], {"host", "trafficPolicy", "subsets"}, f"{self.rule_name}: spec")

    # ------------------------------------------------------------ clusters

    def policy(self, subset: str) -> Obj:
        """The subset's traffic policy: its fields replace the rule's (istio MergeTrafficPolicy)."""
        policy = dict(self.rule["spec"].get("trafficPolicy", {}))
        _only(policy, DR_POLICY, f"{self.rule_name}: spec.trafficPolicy")
        for item in self.rule["spec"].get("subsets", []):
            if item["name"] == subset:
                _only(item, {"name", "labels", "trafficPolicy"}, f"{self.rule_name}: spec.subsets[{subset}]")
                own = item.get("trafficPolicy", {})
                _only(own, DR_POLICY, f"{self.rule_name}: spec.subsets[{subset}].trafficPolicy")
                policy.update(own)
        return policy

    def clusters(self) -> dict[str, Obj]:
        out = {}
        for subset in self.versions:
            name = cluster_name(self.routed.port, subset, self.host)
            out[name] = self.cluster(name, subset, self.routed.endpoints.get(subset, []))
        return out

    def cluster(self, name: str, subset: str, endpoints: list[str]) -> Obj:
        where = f"{self.rule_name}: spec.trafficPolicy"
        policy = self.policy(subset)
        cluster: Obj = {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": name,
            "alt_stat_name": f"{name};",
            "type": "STATIC",
            "connect_timeout": MESH_CONNECT_TIMEOUT,
            "lb_policy": "LEAST_REQUEST",
            "common_lb_config": {},
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [_endpoint(address) for address in endpoints]}],
            },
        }
        options: Obj = {}
        if "connectionPool" in policy:
            options = _connection_pool(cluster, policy["connectionPool"], f"{where}.connectionPool")
        if "outlierDetection" in policy:
            _outlier_detection(cluster, policy["outlierDetection"], f"{where}.outlierDetection")
        if "loadBalancer" in policy:
            _load_balancer(cluster, policy["loadBalancer"], f"{where}.loadBalancer")
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                **options,
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
        return cluster

    def hash_policy(self, destination: Obj) -> Obj | None:
        """Istio's ConsistentHashToHashPolicy for the destination's subset (or the rule)."""
        balancer = self.policy(destination.get("subset", "")).get("loadBalancer", {})
        hashing = balancer.get("consistentHash")
        if not hashing:
            return None
        if "httpHeaderName" in hashing:
            return {"header": {"header_name": hashing["httpHeaderName"]}}
        if "httpCookie" in hashing:
            cookie = hashing["httpCookie"]
            policy = {"name": cookie["name"]}
            if "ttl" in cookie:
                policy["ttl"] = _duration(cookie["ttl"])
            if "path" in cookie:
                policy["path"] = cookie["path"]
            return {"cookie": policy}
        if "useSourceIp" in hashing:
            return {"connection_properties": {"source_ip": bool(hashing["useSourceIp"])}}
        return {"query_parameter": {"name": hashing["httpQueryParameterName"]}}

    # ------------------------------------------------------------ routes

    def virtual_host(self) -> Obj:
        routes = self.vs["spec"].get("http", [])
        if not routes:
            raise Unsupported(f"{self.name}: spec.http is empty; nothing to route")
        namespace = self.vs["metadata"].get("namespace", "default")
        return {
            "name": f"{self.vs['metadata']['name']}.{namespace}",
            "domains": list(self.vs["spec"]["hosts"]),
            "routes": [
                self.route(i, route, match)
                for i, route in enumerate(routes)
                for match in (route.get("match") or [None])
            ],
        }

    def route(self, i: int, http: Obj, match: Obj | None) -> Obj:
        where = f"{self.name}: spec.http[{i}]"
        _only(http, VS_ROUTE, where)
        name = http.get("name", f"http{i}")
        out: Obj = {"name": f"{name}.{match['name']}" if match and match.get("name") else name}
        out["match"] = {"prefix": "/", **self.match(match or {}, where)}
        _add_headers(out, http.get("headers"), f"{where}.headers")
        action: Obj = {"timeout": _duration(http.get("timeout", "0s"))}
        out["route"] = action
        if "mirror" in http:
            share = float(http.get("mirrorPercentage", {}).get("value", 100))
            if share > 0:
                mirror = self.cluster_of(http["mirror"], f"{where}.mirror")
                action["request_mirror_policies"] = [
                    {
                        "cluster": mirror,
                        "runtime_fraction": {"default_value": _per_million(share)},
                        "trace_sampled": False,
                    }
                ]
        destinations = http.get("route") or []
        if not destinations:
            raise Unsupported(
                f"{where}.route is empty: redirects and direct answers are not supported locally"
            )
        hashing = False
        if len(destinations) == 1:
            destination = destinations[0]
            action["cluster"] = self.cluster_of(destination["destination"], f"{where}.route[0].destination")
            self.destination_headers(out, destination, f"{where}.route[0]")
            hashing = self.add_hash(action, destination["destination"])
        else:
            weighted = []
            for j, destination in enumerate(destinations):
                if not destination.get("weight"):
                    continue  # istiod leaves weight-0 destinations out
                entry = {
                    "name": self.cluster_of(destination["destination"], f"{where}.route[{j}].destination"),
                    "weight": int(destination["weight"]),
                }
                self.destination_headers(entry, destination, f"{where}.route[{j}]")
                weighted.append(entry)
                hashing = self.add_hash(action, destination["destination"]) or hashing
            action["weighted_clusters"] = {"clusters": weighted}
        retry = _retry_policy(http.get("retries"), hashing, f"{where}.retries")
        if retry:
            action["retry_policy"] = retry
        if "fault" in http:
            out["typed_per_filter_config"] = {
                "envoy.filters.http.fault": _fault(http["fault"], f"{where}.fault")
            }
        return out

    def match(self, match: Obj, where: str) -> Obj:
        _only(match, {"name", "headers"}, f"{where}.match[]")
        headers = []
        for header, condition in match.get("headers", {}).items():
            headers.append({"name": header, **_string_match(condition, f"{where}.match[].headers.{header}")})
        return {"headers": headers} if headers else {}

    def cluster_of(self, destination: Obj, where: str) -> str:
        _only(destination, {"host", "subset", "port"}, where)
        if destination.get("host") != self.host:
            raise Unsupported(
                f"{where}.host: {destination.get('host')} is not the DestinationRule's host {self.host}"
            )
        subset = destination.get("subset")
        if subset not in self.versions:
            raise Unsupported(f"{where}.subset: {subset!r} is not a subset of {self.rule_name}")
        port = destination.get("port", {}).get("number", self.routed.port)
        if port != self.routed.port:
            raise Unsupported(f"{where}.port: {port} is not the Service's port {self.routed.port}")
        return cluster_name(port, subset, self.host)

    def destination_headers(self, out: Obj, destination: Obj, where: str) -> None:
        _only(destination, {"destination", "weight", "headers"}, where)
        _add_headers(out, destination.get("headers"), f"{where}.headers")
        version = self.versions[destination["destination"]["subset"]]
        out.setdefault("response_headers_to_add", []).append(_header(VERSION_HEADER, version, append=False))

    def add_hash(self, action: Obj, destination: Obj) -> bool:
        policy = self.hash_policy(destination)
        if policy is None:
            return False
        action.setdefault("hash_policy", []).append(policy)
        return True


# ---------------------------------------------------------------------------- pieces


def _only(obj: Obj, allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Unsupported(
            f"{where}.{extra[0]} is not supported by the local gateway; remove it or use a cluster"
        )


def _duration(value: str) -> str:
    """A Kubernetes/Istio duration as protobuf JSON seconds ("1.5s")."""
    return f"{duration_seconds(value):g}s"


def _per_million(percent: float) -> Obj:
    """Istio's translatePercentToFractionalPercent."""
    return {"numerator": int(percent * 10000), "denominator": "MILLION"}


def _endpoint(address: str) -> Obj:
    host, port = address.rsplit(":", 1)
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}


def _string_match(condition: Obj, where: str) -> Obj:
    """Istio's translateHeaderMatch: a regex of `*` or an empty prefix is a presence match."""
    if len(condition) != 1 or not set(condition) <= {"exact", "prefix", "regex"}:
        raise Unsupported(f"{where}: only one of exact, prefix, regex is supported")
    kind, value = next(iter(condition.items()))
    if (kind == "regex" and value == "*") or (kind == "prefix" and value == ""):
        return {"present_match": True}
    if kind == "regex":
        return {"string_match": {"safe_regex": {"regex": value}}}
    return {"string_match": {kind: value}}


def _header(name: str, value: str, append: bool) -> Obj:
    action = "APPEND_IF_EXISTS_OR_ADD" if append else "OVERWRITE_IF_EXISTS_OR_ADD"
    return {"header": {"key": name, "value": value}, "append_action": action}


def _add_headers(out: Obj, headers: Obj | None, where: str) -> None:
    """Istio's TranslateHeadersOperations: set overwrites, add appends, each sorted by name."""
    if not headers:
        return
    _only(headers, {"request", "response"}, where)
    for direction, ops in headers.items():
        _only(ops, {"set", "add", "remove"}, f"{where}.{direction}")
        adds = [_header(k, v, append=False) for k, v in sorted(ops.get("set", {}).items())]
        adds += [_header(k, v, append=True) for k, v in sorted(ops.get("add", {}).items())]
        if any(h["header"]["key"].lower() in ("host", ":authority") for h in adds):
            raise Unsupported(f"{where}.{direction}: rewriting the authority is not supported locally")
        if adds:
            out.setdefault(f"{direction}_headers_to_add", []).extend(adds)
        if ops.get("remove"):
            out.setdefault(f"{direction}_headers_to_remove", []).extend(ops["remove"])


def _retry_policy(retries: Obj | None, hashing: bool, where: str) -> Obj | None:
    """Istio's retry.ConvertPolicy: absent means 2 retries on the mesh default conditions;
    attempts 0 means none."""
    policy: Obj = {"retry_on": RETRY_DEFAULT_ON, "num_retries": 2, "host_selection_retry_max_attempts": 5}
    if not hashing:
        policy["retry_host_predicate"] = [PREVIOUS_HOSTS]
    if retries is None:
        return policy
    _only(retries, {"attempts", "perTryTimeout", "retryOn"}, where)
    if int(retries.get("attempts", 0)) <= 0:
        return None
    policy["num_retries"] = int(retries["attempts"])
    if retries.get("retryOn"):
        parts = [p.strip() for p in retries["retryOn"].split(",") if p.strip()]
        codes = [int(p) for p in parts if p.isdigit()]
        conditions = [p for p in parts if not p.isdigit()]
        if codes:
            policy["retriable_status_codes"] = codes
            if "retriable-status-codes" not in conditions:
                conditions.append("retriable-status-codes")
        policy["retry_on"] = ",".join(conditions)
    if "perTryTimeout" in retries:
        policy["per_try_timeout"] = _duration(retries["perTryTimeout"])
    return policy


def _fault(fault: Obj, where: str) -> Obj:
    """Istio's TranslateFault: an absent percentage injects nothing."""
    _only(fault, {"abort", "delay"}, where)
    out: Obj = {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
    if "abort" in fault:
        abort = fault["abort"]
        _only(abort, {"httpStatus", "percentage"}, f"{where}.abort")
        if "httpStatus" not in abort:
            raise Unsupported(f"{where}.abort: only httpStatus is supported locally")
        out["abort"] = {
            "http_status": int(abort["httpStatus"]),
            "percentage": _per_million(float(abort.get("percentage", {}).get("value", 0))),
        }
    if "delay" in fault:
        delay = fault["delay"]
        _only(delay, {"fixedDelay", "percentage"}, f"{where}.delay")
        out["delay"] = {
            "fixed_delay": _duration(delay["fixedDelay"]),
            "percentage": _per_million(float(delay.get("percentage", {}).get("value", 0))),
        }
    return out


def _connection_pool(cluster: Obj, pool: Obj, where: str) -> Obj:
    """Istio's applyConnectionPool; returns the HttpProtocolOptions fields it sets."""
    _only(pool, {"tcp", "http"}, where)
    tcp, http = pool.get("tcp", {}), pool.get("http", {})
    _only(tcp, {"maxConnections", "connectTimeout", "idleTimeout"}, f"{where}.tcp")
    _only(
        http,
        {
            "http1MaxPendingRequests",
            "http2MaxRequests",
            "maxRetries",
            "maxRequestsPerConnection",
            "idleTimeout",
        },
        f"{where}.http",
    )
    limits = {
        "max_connections": tcp.get("maxConnections") or UNLIMITED,
        "max_pending_requests": http.get("http1MaxPendingRequests") or UNLIMITED,
        "max_requests": http.get("http2MaxRequests") or UNLIMITED,
        "max_retries": http.get("maxRetries") or UNLIMITED,
    }
    cluster["circuit_breakers"] = {"thresholds": [{**limits, "track_remaining": True}]}
    if "connectTimeout" in tcp:
        cluster["connect_timeout"] = _duration(tcp["connectTimeout"])
    common: Obj = {}
    idle = http.get("idleTimeout", tcp.get("idleTimeout"))
    if idle:
        common["idle_timeout"] = _duration(idle)
    if http.get("maxRequestsPerConnection"):
        common["max_requests_per_connection"] = int(http["maxRequestsPerConnection"])
    return {"common_http_protocol_options": common} if common else {}


def _outlier_detection(cluster: Obj, outlier: Obj, where: str) -> None:
    """Istio's applyOutlierDetection: success-rate ejection off, the panic threshold at
    minHealthPercent (0 unless set: an ejected version gets no traffic, not panic routing)."""
    _only(
        outlier,
        {
            "consecutive5xxErrors",
            "consecutiveGatewayErrors",
            "interval",
            "baseEjectionTime",
            "maxEjectionPercent",
            "minHealthPercent",
        },
        where,
    )
    out: Obj = {"enforcing_success_rate": 0}
    if "consecutive5xxErrors" in outlier:
        value = int(outlier["consecutive5xxErrors"])
        out["consecutive_5xx"] = value
        out["enforcing_consecutive_5xx"] = 100 if value > 0 else 0
    if "consecutiveGatewayErrors" in outlier:
        value = int(outlier["consecutiveGatewayErrors"])
        out["consecutive_gateway_failure"] = value
        out["enforcing_consecutive_gateway_failure"] = 100 if value > 0 else 0
    if "interval" in outlier:
        out["interval"] = _duration(outlier["interval"])
    if "baseEjectionTime" in outlier:
        out["base_ejection_time"] = _duration(outlier["baseEjectionTime"])
    if outlier.get("maxEjectionPercent", 0) > 0:
        out["max_ejection_percent"] = int(outlier["maxEjectionPercent"])
    cluster["outlier_detection"] = out
    cluster["common_lb_config"]["healthy_panic_threshold"] = {
        "value": float(outlier.get("minHealthPercent", 0))
    }


def _load_balancer(cluster: Obj, balancer: Obj, where: str) -> None:
    """Istio's applyLoadBalancer and ApplyRingHashLoadBalancer."""
    _only(balancer, {"simple", "consistentHash"}, where)
    simple = balancer.get("simple")
    policies = {
        "LEAST_REQUEST": "LEAST_REQUEST",
        "LEAST_CONN": "LEAST_REQUEST",
        "ROUND_ROBIN": "ROUND_ROBIN",
        "RANDOM": "RANDOM",
    }
    if simple:
        if simple not in policies:
            raise Unsupported(
                f"{where}.simple: {simple} is not supported locally; use one of {sorted(policies)}"
            )
        cluster["lb_policy"] = policies[simple]
    hashing = balancer.get("consistentHash")
    if hashing is None:
        return
    keys = {"httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"}
    _only(hashing, keys | {"ringHash", "maglev", "minimumRingSize"}, f"{where}.consistentHash")
    if len(keys & set(hashing)) != 1:
        raise Unsupported(f"{where}.consistentHash: give exactly one of {', '.join(sorted(keys))}")
    if "httpCookie" in hashing:
        _only(hashing["httpCookie"], {"name", "path", "ttl"}, f"{where}.consistentHash.httpCookie")
    if "maglev" in hashing:
        cluster["lb_policy"] = "MAGLEV"
        if hashing["maglev"].get("tableSize"):
            cluster["maglev_lb_config"] = {"table_size": int(hashing["maglev"]["tableSize"])}
    else:
        cluster["lb_policy"] = "RING_HASH"
        size = hashing.get("ringHash", {}).get("minimumRingSize") or hashing.get("minimumRingSize") or 1024
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": int(size)}


# ---------------------------------------------------------------------------- the gateway


def local_replies() -> Obj:
    """HttpConnectionManager `local_reply_config`: Envoy's own answers as `{"error": "..."}`."""
    mappers = [
        {
            "filter": {"response_flag_filter": {"flags": [flag]}},
            "body_format_override": {"json_format": {"error": text}, "content_type": "application/json"},
        }
        for flag, text in LOCAL_REPLIES
    ]
    return {
        "mappers": mappers,
        "body_format": {"json_format": {"error": "%LOCAL_REPLY_BODY%"}, "content_type": "application/json"},
    }


def listener(port: int, routes_path: str, access_log: str) -> Obj:
    """The gateway's listener on 127.0.0.1:`port`: routes from the file `routes_path` (RDS)."""
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "strip_any_host_port": True,
        "rds": {
            "route_config_name": ROUTE_CONFIG,
            "config_source": {"path_config_source": {"path": routes_path}, "resource_api_version": "V3"},
        },
        "local_reply_config": local_replies(),
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": access_log,
                    "log_format": {
                        "json_format": {
                            "start": "%START_TIME%",
                            "authority": "%REQ(:AUTHORITY)%",
                            "route": "%ROUTE_NAME%",
                            "cluster": "%UPSTREAM_CLUSTER_RAW%",
                            "upstream": "%UPSTREAM_HOST%",
                            "code": "%RESPONSE_CODE%",
                            "flags": "%RESPONSE_FLAGS%",
                            "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                            "ms": "%DURATION%",
                            "request_id": "%REQ(X-REQUEST-ID)%",
                        }
                    },
                },
            }
        ],
        "http_filters": [
            {
                "name": "envoy.filters.http.fault",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def bootstrap(admin_port: int, files: dict[str, str], node: str) -> Obj:
    """Envoy's bootstrap: the admin on 127.0.0.1:`admin_port`, clusters and listeners from the
    files `files["clusters"]` and `files["listeners"]` (filesystem xDS: a file moved into place
    is applied), Istio's stats tags."""
    return {
        "node": {"id": node, "cluster": "modelctl-local"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": {"use_all_default_tags": False, "stats_tags": STATS_TAGS},
        "dynamic_resources": {
            "cds_config": {"path_config_source": {"path": files["clusters"]}, "resource_api_version": "V3"},
            "lds_config": {"path_config_source": {"path": files["listeners"]}, "resource_api_version": "V3"},
        },
    }


def discovery(version: str, items: list[Obj]) -> Obj:
    """A DiscoveryResponse file's content: `version` is what the admin reports once applied."""
    return {"version_info": version, "resources": items}


def static_bootstrap(admin_port: int, clusters: list[Obj], route_config: Obj, port: int) -> Obj:
    """The same resources inline, for `envoy --mode validate` (which reads no xDS file)."""
    gateway = listener(port, "/dev/null", "/dev/null")
    manager = gateway["filter_chains"][0]["filters"][0]["typed_config"]
    del manager["rds"]
    manager["route_config"] = {k: v for k, v in route_config.items() if k != "@type"}
    strip = [{k: v for k, v in item.items() if k != "@type"} for item in clusters]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": {"use_all_default_tags": False, "stats_tags": STATS_TAGS},
        "static_resources": {
            "clusters": strip,
            "listeners": [{k: v for k, v in gateway.items() if k != "@type"}],
        },
    }
