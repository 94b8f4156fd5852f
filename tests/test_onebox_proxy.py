"""The nginx translation of VirtualServices: every rendered route is accepted by nginx, fields it
does not translate are refused in one line, and `fault.abort` answers with its status and share."""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from scipy.stats import binom

from infra.build import build_stack
from modelctl.core.mesh import merged_destination_rules
from modelctl.core.state import load_state
from onebox.processes import free_port
from onebox.proxy import Routed, Unsupported, nginx_config
from tests.factories import full_docs, write_repo

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed; run make tools")


def fraud_detection(root: Path) -> Routed:
    """staging's fraud-detection routes: header overrides, sticky routes, the weighted route."""
    return next(
        r for r in routed("staging", root) if r.virtual_service["metadata"]["name"] == "fraud-detection"
    )


def routed(stack: str, root: Path) -> list[Routed]:
    objects = build_stack(load_state(root), stack)
    rules = merged_destination_rules(o for o in objects if o["kind"] == "DestinationRule")
    result = []
    for vs in (o for o in objects if o["kind"] == "VirtualService"):
        rule = rules[(vs["metadata"]["namespace"], vs["spec"]["hosts"][0])]
        # A closed port per subset: these tests never reach a server.
        addresses = {s["name"]: "127.0.0.1:9" for s in rule["spec"]["subsets"]}
        result.append(Routed(vs, rule, addresses))
    return result


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repo(tmp_path_factory.mktemp("proxy") / "repo", *full_docs(), git=False)


def nginx_check(conf: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(conf, encoding="utf-8")
    assert NGINX is not None
    args = [
        NGINX,
        "-t",
        "-q",
        "-p",
        str(prefix),
        "-e",
        str(prefix / "error.log"),
        "-c",
        str(prefix / "nginx.conf"),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_rendered_virtual_service_becomes_a_valid_nginx_configuration(
    root: Path, tmp_path: Path, stack: str
) -> None:
    conf = nginx_config(routed(stack, root), free_port(), str(tmp_path))
    check = nginx_check(conf, tmp_path)
    assert check.returncode == 0, check.stderr


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
        nginx_config([Routed(vs, first.destination_rule, first.addresses)], 1, "/nonexistent")
    message = str(error.value)
    assert field in message
    assert "\n" not in message
    assert message.startswith(f"VirtualService {vs['metadata']['name']}: spec")


@pytest.fixture
def aborting_gateway(root: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """nginx for staging's fraud-detection with 40% of requests aborted with 503 by Istio's
    `fault.abort`; the rest reach a closed port (502)."""
    first = fraud_detection(root)
    vs = copy.deepcopy(first.virtual_service)
    for route in vs["spec"]["http"]:
        route["fault"] = {"abort": {"httpStatus": 503, "percentage": {"value": 40}}}
    port = free_port()
    conf = nginx_config([Routed(vs, first.destination_rule, first.addresses)], port, str(tmp_path))
    assert nginx_check(conf, tmp_path).returncode == 0
    assert NGINX is not None
    args = [NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield url, vs["spec"]["hosts"][0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_fault_abort_answers_its_status_for_its_share(aborting_gateway: tuple[str, str]) -> None:
    url, host = aborting_gateway
    total = 600
    with httpx.Client(timeout=5) as client:
        codes = Counter(
            client.post(f"{url}/predict", json={}, headers={"host": host}).status_code for _ in range(total)
        )
    assert set(codes) == {503, 502}
    low, high = binom.interval(0.999, total, 0.40)
    assert low <= codes[503] <= high, codes
