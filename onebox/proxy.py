"""nginx as the data plane: the rendered VirtualService and DestinationRule, translated with Istio's
semantics (https://istio.io/latest/docs/reference/config/networking/virtual-service/).

| Istio                                   | nginx                                                      |
|-----------------------------------------|------------------------------------------------------------|
| `hosts`                                 | one `server` per VirtualService, `server_name` its hosts   |
| `http[]` in order, first match wins     | one `map` over every match's flags, regexes in route order |
| `match[].headers.H.exact/prefix/regex`  | a `map $http_H` flag per header (regex: RE2 full match)    |
| several `match[]` (OR), headers (AND)   | one flag pattern per `match[]` entry                       |
| `route[].destination.subset`            | an `upstream` per DestinationRule subset                   |
| `route[].weight`                        | `split_clients` on `$request_id` (random per request)      |
| `route[].headers.response.add/set`      | `add_header ... always` from a map on the destination      |
| `route[].headers.request.add/set`       | `proxy_set_header` from a map on the destination           |
| `mirror` + `mirrorPercentage`           | `mirror` with `split_clients`; its responses are discarded |
| `fault.abort` (httpStatus, percentage)  | `split_clients` and `return`, before any upstream          |
| `timeout`, `retries`                    | `proxy_read_timeout`, `proxy_next_upstream[_tries]`        |
| DestinationRule `connectTimeout`        | `proxy_connect_timeout`                                    |

Every request that reaches a version is answered with an `x-model-version` header naming it. Any
other field is refused with one line (`Unsupported`), never ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from modelctl.core.contract import VERSION_HEADER

Obj = dict[str, Any]
# Fields with no effect when every subset has exactly one local endpoint (no pool to eject from,
# no connection limits worth enforcing on one machine): accepted and left out.
ONE_ENDPOINT_POLICY = {"outlierDetection", "connectionPool"}
RETRY_ON = {
    "gateway-error": "http_502 http_503 http_504",
    "connect-failure": "error",
    "refused-stream": "error",
    "5xx": "http_500 http_502 http_503 http_504",
    "reset": "error",
}


class Unsupported(ValueError):
    """A field of a rendered object the local translation does not implement (one line)."""


@dataclass(frozen=True)
class Routed:
    """One VirtualService with its DestinationRule and the local address of each subset."""

    virtual_service: Obj
    destination_rule: Obj
    addresses: dict[str, str]  # subset name -> "127.0.0.1:port"


def subset_versions(destination_rule: Obj) -> dict[str, str]:
    """Subset name -> the `version` label it selects."""
    return {s["name"]: s["labels"]["version"] for s in destination_rule["spec"].get("subsets", [])}


def nginx_config(routed: list[Routed], port: int, prefix: str) -> str:
    """The whole nginx.conf of a gateway on 127.0.0.1:`port`, its files under `prefix`.

    Raises
    ------
    Unsupported
        naming the object and the field the translation does not implement.
    """
    blocks = [_Server(index, r).render(port) for index, r in enumerate(routed)]
    return _MAIN.format(prefix=prefix, port=port, servers="\n".join(blocks))


_MAIN = """# Written by 'modelctl up' from the rendered VirtualServices; rewritten on every reconcile.
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    log_format routed '$remote_addr "$request" $status $host $upstream_addr $request_time';
    access_log {prefix}/access.log routed;
    server_tokens off;
    server_names_hash_bucket_size 256;
    default_type application/json;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header x-request-id $request_id;
    server {{
        listen 127.0.0.1:{port} default_server;
        location / {{ return 404 '{{"error": "no VirtualService names host $host"}}\\n'; }}
    }}
{servers}
}}
"""


def _quote(text: str, regex: bool = False) -> str:
    """A double-quoted nginx string holding `text` as is (nginx unescapes \\\\ and \\"); a map's
    regex keeps its `$`, a value may not hold one (nginx would read a variable)."""
    if "$" in text and not regex:
        raise Unsupported(f"{text!r}: a '$' would be read by nginx as a variable")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _header_pattern(name: str, condition: Obj, where: str) -> str:
    """An nginx map regex with Istio's StringMatch semantics (Envoy's regex is a full match)."""
    kinds = set(condition) - {"exact", "prefix", "regex"}
    if kinds or len(condition) != 1:
        raise Unsupported(f"{where}.headers.{name}: only one of exact, prefix, regex is supported")
    kind, value = next(iter(condition.items()))
    if kind == "exact":
        return _quote(f"~^{re.escape(value)}$", regex=True)
    if kind == "prefix":
        return _quote(f"~^{re.escape(value)}", regex=True)
    return _quote(f"~^(?:{value})$", regex=True)


class _Server:
    """The nginx text of one VirtualService; every variable is prefixed by its server index."""

    def __init__(self, index: int, routed: Routed) -> None:
        self.p = f"vs{index}"
        self.routed = routed
        self.vs = routed.virtual_service
        self.name = f"VirtualService {self.vs['metadata']['name']}"
        self.versions = subset_versions(routed.destination_rule)
        self.maps: list[str] = []
        self.flags: list[str] = []
        self.destinations: dict[str, Obj] = {}  # id -> HTTPRouteDestination
        self._check_fields()

    def _check_fields(self) -> None:
        spec = self.vs["spec"]
        _only(spec, {"hosts", "gateways", "http"}, f"{self.name}: spec")
        for i, route in enumerate(spec.get("http", [])):
            where = f"{self.name}: spec.http[{i}]"
            _only(
                route,
                {"name", "match", "route", "timeout", "retries", "mirror", "mirrorPercentage", "fault"},
                where,
            )
            for j, match in enumerate(route.get("match", [])):
                _only(match, {"name", "headers"}, f"{where}.match[{j}]")
            for j, destination in enumerate(route["route"]):
                _only(destination, {"destination", "weight", "headers"}, f"{where}.route[{j}]")
                for direction, ops in destination.get("headers", {}).items():
                    _only({direction: 0}, {"request", "response"}, f"{where}.route[{j}].headers")
                    _only(ops, {"add", "set"}, f"{where}.route[{j}].headers.{direction}")
            if "fault" in route:
                _only(route["fault"], {"abort"}, f"{where}.fault")
                _only(route["fault"]["abort"], {"httpStatus", "percentage"}, f"{where}.fault.abort")
        dr_spec = self.routed.destination_rule["spec"]
        dr_name = f"DestinationRule {self.routed.destination_rule['metadata']['name']}"
        _only(dr_spec, {"host", "trafficPolicy", "subsets"}, f"{dr_name}: spec")
        policy = dr_spec.get("trafficPolicy", {})
        _only(policy, ONE_ENDPOINT_POLICY, f"{dr_name}: spec.trafficPolicy")
        for subset in dr_spec.get("subsets", []):
            _only(subset, {"name", "labels"}, f"{dr_name}: spec.subsets[{subset.get('name')}]")

    # ------------------------------------------------------------ pieces

    def _upstream(self, destination: Obj, where: str) -> str:
        hosts = self.vs["spec"]["hosts"]
        if destination.get("host") not in hosts:
            raise Unsupported(f"{where}.destination.host: {destination.get('host')} is not a host of {hosts}")
        subset = destination.get("subset")
        if subset not in self.routed.addresses:
            raise Unsupported(f"{where}.destination.subset: {subset!r} has no running version")
        return f"{self.p}_{subset}"

    def _flag(self, header: str, condition: Obj, where: str) -> str:
        variable = f"${self.p}_f{len(self.flags)}"
        self.flags.append(variable)
        source = "$http_" + header.lower().replace("-", "_")
        pattern = _header_pattern(header, condition, where)
        self.maps.append(f"map {source} {variable} {{\n    default 0;\n    {pattern} 1;\n}}")
        return variable

    def _route_map(self, routes: list[Obj]) -> None:
        """`$p_route` = the index of the first route whose match holds (Istio: first match wins)."""
        patterns: list[tuple[list[str], int]] = []
        for i, route in enumerate(routes):
            matches = route.get("match") or [{}]
            for j, match in enumerate(matches):
                where = f"{self.name}: spec.http[{i}].match[{j}]"
                needed = [self._flag(h, c, where) for h, c in match.get("headers", {}).items()]
                patterns.append((needed, i))
        lines = []
        for needed, i in patterns:
            pattern = "".join("1" if flag in needed else "." for flag in self.flags)
            lines.append(f'    "~^x{pattern}$" r{i};')
        source = '"x' + "".join(self.flags) + '"'
        self.maps.append(f"map {source} ${self.p}_route {{\n    default none;\n" + "\n".join(lines) + "\n}")

    def _split(self, key: str, shares: list[tuple[float, str]], otherwise: str) -> str:
        """A variable set to each value with its percentage, independently of other splits."""
        variable = f"${self.p}_{key}"
        lines = [f"    {share:g}% {value};" for share, value in shares if share > 0]
        lines.append(f"    * {otherwise};")
        body = "\n".join(lines)
        self.maps.append(f'split_clients "${{request_id}}{key}" {variable} {{\n{body}\n}}')
        return variable

    def _destinations(self, i: int, route: Obj) -> str:
        """The variable or id naming the destination that route `i` sends this request to."""
        ids = []
        for j, destination in enumerate(route["route"]):
            ident = f"r{i}d{j}"
            self._upstream(destination["destination"], f"{self.name}: spec.http[{i}].route[{j}]")
            self.destinations[ident] = destination
            ids.append(ident)
        weights = [float(d.get("weight", 100 if len(ids) == 1 else 0)) for d in route["route"]]
        if len(ids) == 1:
            return ids[0]
        if abs(sum(weights) - 100) > 1e-9:
            raise Unsupported(f"{self.name}: spec.http[{i}].route weights sum to {sum(weights):g}, not 100")
        positive = [(w, d) for w, d in zip(weights, ids, strict=True) if w > 0]
        return self._split(f"split{i}", [(w, d) for w, d in positive[:-1]], positive[-1][1])

    def _by_destination(self, variable: str, values: dict[str, str]) -> str:
        lines = "".join(f"    {ident} {_quote(v)};\n" for ident, v in values.items())
        self.maps.append(f'map ${self.p}_dest ${self.p}_{variable} {{\n    default "";\n{lines}}}')
        return f"${self.p}_{variable}"

    def render(self, port: int) -> str:
        routes = self.vs["spec"].get("http", [])
        if not routes:
            raise Unsupported(f"{self.name}: spec.http is empty; nothing to route")
        self._route_map(routes)
        chosen = {f"r{i}": self._destinations(i, route) for i, route in enumerate(routes)}
        self.maps.append(
            f'map ${self.p}_route ${self.p}_dest {{\n    default "";\n'
            + "".join(f"    {r} {d};\n" for r, d in chosen.items())
            + "}"
        )
        upstreams = {
            ident: self._upstream(d["destination"], self.name) for ident, d in self.destinations.items()
        }
        upstream = self._by_destination("upstream", upstreams)
        version = self._by_destination(
            "version",
            {ident: self.versions[d["destination"]["subset"]] for ident, d in self.destinations.items()},
        )
        directives = [
            f'if ({upstream} = "") {{ return 404 \'{{"error": "no route of {self.name} matches"}}\\n\'; }}',
            *self._faults(routes),
            *self._mirror(routes),
            *self._headers(),
            *self._timeouts(routes),
            f"add_header {VERSION_HEADER} {version} always;",
            f"proxy_pass http://{upstream};",
        ]
        servers = [
            f"upstream {self._upstream_name(subset)} {{\n    server {address};\n    keepalive 16;\n}}"
            for subset, address in sorted(self.routed.addresses.items())
        ]
        location = "\n".join(f"            {line}" for line in directives)
        hosts = " ".join(self.vs["spec"]["hosts"])
        block = [
            *self.maps,
            *servers,
            "server {",
            f"    listen 127.0.0.1:{port};",
            f"    server_name {hosts};",
            "    location / {",
            location,
            "    }",
            *self._mirror_location(routes),
            "}",
        ]
        return "\n".join(f"    {line}" for text in block for line in text.splitlines())

    def _upstream_name(self, subset: str) -> str:
        return f"{self.p}_{subset}"

    def _faults(self, routes: list[Obj]) -> list[str]:
        """Istio's fault.abort answers before any upstream is chosen, for a share of the requests."""
        lines = []
        for i, route in enumerate(routes):
            abort = route.get("fault", {}).get("abort")
            if not abort:
                continue
            status = int(abort["httpStatus"])
            share = float(abort.get("percentage", {}).get("value", 100))
            roll = self._split(f"fault{i}", [(share, "1")], '""')
            self.maps.append(
                f'map ${self.p}_route ${self.p}_abort{i} {{\n    default "";\n    r{i} {roll};\n}}'
            )
            lines.append(
                f'if (${self.p}_abort{i}) {{ return {status} \'{{"error": "fault injected by route {i}"}}\\n\'; }}'
            )
        return lines

    def _mirror(self, routes: list[Obj]) -> list[str]:
        targets = {}
        for i, route in enumerate(routes):
            if "mirror" not in route:
                continue
            upstream = self._upstream(route["mirror"], f"{self.name}: spec.http[{i}].mirror")
            share = float(route.get("mirrorPercentage", {}).get("value", 100))
            targets[f"r{i}"] = self._split(f"mirror{i}", [(share, upstream)], '""')
        if not targets:
            return []
        self.maps.append(
            f'map ${self.p}_route ${self.p}_mirror_to {{\n    default "";\n'
            + "".join(f"    {r} {v};\n" for r, v in targets.items())
            + "}"
        )
        # Decided here, in the main request, so the mirror subrequest reads the same value.
        return [f"set ${self.p}_mirror ${self.p}_mirror_to;", f"mirror /_{self.p}_mirror;"]

    def _mirror_location(self, routes: list[Obj]) -> list[str]:
        if not any("mirror" in route for route in routes):
            return []
        return [
            f"    location = /_{self.p}_mirror {{",
            "        internal;",
            f'        if (${self.p}_mirror = "") {{ return 204; }}',
            f"        proxy_pass http://${self.p}_mirror$request_uri;",
            "    }",
        ]

    def _headers(self) -> list[str]:
        lines = []
        names: dict[tuple[str, str, str], dict[str, str]] = {}
        for ident, destination in self.destinations.items():
            for direction, ops in destination.get("headers", {}).items():
                for op, headers in ops.items():
                    for header, value in headers.items():
                        names.setdefault((direction, header.lower(), op), {})[ident] = value
        for n, ((direction, header, op), values) in enumerate(sorted(names.items())):
            variable = self._by_destination(f"h{n}", values)
            if direction == "request":
                lines.append(f"proxy_set_header {header} {variable};")
            else:
                if op == "set":
                    lines.append(f"proxy_hide_header {header};")
                lines.append(f"add_header {header} {variable} always;")
        return lines

    def _timeouts(self, routes: list[Obj]) -> list[str]:
        timeouts = {route.get("timeout") for route in routes}
        retries = {repr(route.get("retries")) for route in routes}
        if len(timeouts) > 1 or len(retries) > 1:
            raise Unsupported(f"{self.name}: spec.http routes differ in timeout or retries")
        lines = []
        policy = self.routed.destination_rule["spec"].get("trafficPolicy", {})
        connect = policy.get("connectionPool", {}).get("tcp", {}).get("connectTimeout")
        if connect:
            lines.append(f"proxy_connect_timeout {connect};")
        timeout = routes[0].get("timeout")
        retry = routes[0].get("retries") or {}
        _only(retry, {"attempts", "perTryTimeout", "retryOn"}, f"{self.name}: spec.http[].retries")
        if timeout:
            lines.append(f"proxy_next_upstream_timeout {timeout};")
        per_try = retry.get("perTryTimeout", timeout)
        if per_try:
            lines.append(f"proxy_read_timeout {per_try};")
        if retry:
            conditions = []
            for condition in retry.get("retryOn", "").split(","):
                if condition not in RETRY_ON:
                    raise Unsupported(
                        f"{self.name}: spec.http[].retries.retryOn {condition!r} is not supported"
                    )
                conditions += RETRY_ON[condition].split()
            lines.append(f"proxy_next_upstream {' '.join(dict.fromkeys(conditions))} non_idempotent;")
            lines.append(f"proxy_next_upstream_tries {int(retry.get('attempts', 0)) + 1};")
        return lines


def _only(obj: Obj, allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Unsupported(
            f"{where}.{extra[0]} is not supported by the local gateway; remove it or use a cluster"
        )
