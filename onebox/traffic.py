"""Traffic through the local gateway: rows of held-out data, users as cookies, optional feedback.

Each user keeps the cookies the gateway sets (the sticky routes' `Set-Cookie`), as a browser would.
Feedback (the true label) goes back through the gateway with the prediction's receipt, as an
application sends it: whichever server takes it counts it on the version that predicted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from http.cookies import SimpleCookie
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from modelctl.core.contract import VERSION_HEADER

USER_COOKIE = "user"
CONCURRENCY = 16


@dataclass(frozen=True)
class Workload:
    """What to send: `rows` (n, features) with their `labels` (class names), to `host` via `gateway`."""

    gateway: str
    host: str
    rows: list[list[float | int | bool]]
    labels: list[str]
    requests: int
    users: int = 100
    rate: float | None = None  # requests per second; None: as fast as CONCURRENCY allows
    feedback: bool = False
    seed: int = 0


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    feedback: int = 0

    def summary(self) -> dict[str, Any]:
        versions = sorted(set(self.latencies) | set(self.errors))
        by_version = {}
        for version in versions:
            seconds = np.array(self.latencies[version]) * 1000
            by_version[version] = {
                "requests": len(seconds) + self.errors[version],
                "errors": self.errors[version],
                "p50_ms": round(float(np.percentile(seconds, 50)), 2) if len(seconds) else None,
                "p99_ms": round(float(np.percentile(seconds, 99)), 2) if len(seconds) else None,
            }
        return {
            "requests": sum(v["requests"] for v in by_version.values()),
            "versions": by_version,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "feedback": self.feedback,
        }


def shifted(
    rows: npt.NDArray[np.float64], names: list[str], shifts: dict[str, float]
) -> npt.NDArray[np.float64]:
    """`rows` with `delta` added to each named feature's column (simulated drift)."""
    out = rows.copy()
    for name, delta in shifts.items():
        out[:, names.index(name)] += delta
    return out


def no_cookie_jar() -> CookieJar:
    """A jar that keeps nothing: each simulated user carries its own cookies, not the client's."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def json_rows(rows: npt.NDArray[np.float64], types: list[str]) -> list[list[float | int | bool]]:
    """Rows as the signature's JSON types: the server refuses 1.0 for a bool (type: bool, int, float)."""
    cast: dict[str, Callable[[float], float | int | bool]] = {"bool": bool, "int": int, "float": float}
    casts = [cast[kind] for kind in types]
    return [[c(v) for c, v in zip(casts, row, strict=True)] for row in rows.tolist()]


def send(work: Workload, advance: Callable[[int], None]) -> dict[str, Any]:
    """Send `work.requests` /predict requests; a summary per version (requests, errors, p50/p99 ms).

    `advance(1)` is called after each request (a progress bar).
    """
    return asyncio.run(_send(work, advance))


async def _send(work: Workload, advance: Callable[[int], None]) -> dict[str, Any]:
    rng = np.random.default_rng(work.seed)
    picks = rng.integers(0, len(work.rows), work.requests)
    users = rng.integers(0, work.users, work.requests)
    jars: dict[int, dict[str, str]] = defaultdict(dict)
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(work.requests):
        queue.put_nowait(index)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=30.0, limits=limits, cookies=no_cookie_jar()) as client:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                if work.rate:
                    await asyncio.sleep(max(0.0, started + index / work.rate - time.monotonic()))
                user = int(users[index])
                row = int(picks[index])
                await _one(client, work, tally, jars[user], user=user, row=row)
                advance(1)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return tally.summary()


async def _one(
    client: httpx.AsyncClient, work: Workload, tally: Tally, jar: dict[str, str], *, user: int, row: int
) -> None:
    cookies = {USER_COOKIE: f"u{user}", **jar}
    headers = {"host": work.host, "cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    began = time.perf_counter()
    try:
        response = await client.post(
            f"{work.gateway}/predict", json={"features": work.rows[row]}, headers=headers
        )
    except httpx.HTTPError:
        tally.errors["unanswered"] += 1
        tally.statuses[0] += 1
        return
    elapsed = time.perf_counter() - began
    version = response.headers.get(VERSION_HEADER) or "unrouted"
    tally.statuses[response.status_code] += 1
    for value in response.headers.get_list("set-cookie"):
        jar.update({name: morsel.value for name, morsel in SimpleCookie(value).items()})
    if response.status_code != 200:
        tally.errors[version] += 1
        return
    tally.latencies[version].append(elapsed)
    if work.feedback:
        body = {"receipt": response.json()["receipt"], "label": work.labels[row]}
        answer = await client.post(f"{work.gateway}/feedback", json=body, headers=headers)
        tally.feedback += answer.status_code == 200
