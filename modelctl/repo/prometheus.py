"""Reading Prometheus: instant queries over its HTTP API (`GET /api/v1/query`), through httpx.

The answer format is Prometheus' documented one (https://prometheus.io/docs/prometheus/latest/
querying/api/#instant-queries): `{"status": "success", "data": {"resultType": "vector",
"result": [{"metric": {...labels}, "value": [time, "number"]}]}}`, or for a range selector a
"matrix" whose items carry `"values": [[time, "number"], ...]`. Any failure (unreachable,
an HTTP error, a PromQL error) is one UserError naming the URL and the query.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from modelctl.core import contract
from modelctl.core.analysis.window import Sample
from modelctl.core.errors import UserError

TIMEOUT_SECONDS = 10.0
Key = TypeVar("Key", bound=Hashable)


def query_all(url: str, queries: Mapping[str, str], at: datetime) -> dict[str, list[Sample]]:
    """Run each named PromQL at the instant `at`; name -> the vector's samples.

    Raises
    ------
    UserError
        Prometheus cannot be reached, answers with an error, or not with a vector.
    """
    results = _results(url, queries, at, "vector")
    return {
        name: [(item["metric"], float(item["value"][1])) for item in items] for name, items in results.items()
    }


def clock(url: str) -> datetime:
    """Prometheus' own time (`time()` evaluated at its now): the instant an analysis reads its
    windows at, whatever the clock of the machine running it says.

    Raises
    ------
    UserError
        Prometheus cannot be reached or answers with an error.
    """
    import httpx

    endpoint = url.rstrip("/") + "/api/v1/query"
    try:
        with httpx.Client(timeout=TIMEOUT_SECONDS) as client:
            response = client.get(endpoint, params={"query": "time()"})
            body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise UserError(endpoint, f"Prometheus did not answer ({type(exc).__name__}: {exc})", _FIX) from None
    data = body.get("data", {}) if isinstance(body, dict) else {}
    if response.status_code != 200 or data.get("resultType") != "scalar":
        raise UserError(endpoint, f"the query 'time()' failed: HTTP {response.status_code}", _FIX)
    return datetime.fromtimestamp(float(data["result"][0]), UTC)


def lookback_delta(url: str) -> str:
    """Prometheus' `--query.lookback-delta` (a Prometheus duration, "5m" by default), from its
    flags (`GET /api/v1/status/flags`); `contract.LOOKBACK_DELTA` where it does not say (a
    backend without that endpoint).
    """
    import httpx

    try:
        flags = httpx.get(url.rstrip("/") + "/api/v1/status/flags", timeout=TIMEOUT_SECONDS).json()
        value = flags["data"]["query.lookback-delta"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return contract.LOOKBACK_DELTA
    return value if isinstance(value, str) and value else contract.LOOKBACK_DELTA


def query_samples(url: str, queries: Mapping[Key, str], at: datetime) -> dict[Key, list[float]]:
    """Run each range-selector PromQL at the instant `at`; key -> the values of its series, oldest
    first (of all its series, one after another, when several match).

    Raises
    ------
    UserError
        Prometheus cannot be reached, answers with an error, or not with a matrix.
    """
    results = _results(url, queries, at, "matrix")
    return {
        key: [float(value) for item in items for _, value in item["values"]] for key, items in results.items()
    }


def _results(
    url: str, queries: Mapping[Key, str], at: datetime, kind: str
) -> dict[Key, list[dict[str, Any]]]:
    import httpx  # loaded when a query runs: every other command starts without it

    endpoint = url.rstrip("/") + "/api/v1/query"
    with httpx.Client(timeout=TIMEOUT_SECONDS) as client:
        return {key: _data(client, endpoint, promql, at, kind) for key, promql in queries.items()}


def _data(client: Any, endpoint: str, promql: str, at: datetime, kind: str) -> list[dict[str, Any]]:
    """The result of one instant query, which must be of `kind` ("vector" or "matrix")."""
    import httpx

    try:
        response = client.get(endpoint, params={"query": promql, "time": f"{at.timestamp():.3f}"})
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise UserError(endpoint, f"Prometheus did not answer ({type(exc).__name__}: {exc})", _FIX) from None
    if response.status_code != 200 or body.get("status") != "success":
        detail = body.get("error") or f"HTTP {response.status_code}"
        raise UserError(endpoint, f"the query {promql!r} failed: {detail}", _FIX)
    data = body.get("data", {})
    if data.get("resultType") != kind:
        raise UserError(
            endpoint, f"the query {promql!r} returned a {data.get('resultType')}, not a {kind}", _FIX
        )
    result: list[dict[str, Any]] = data.get("result", [])
    return result


_FIX = "check the Prometheus URL (--prometheus, or monitoring.prometheus_url in the stack file)"
