"""Time to safety: how long callers get errors from a broken canary on the local stack.

A scratch repository (the test pipeline's, v1.0.0 stable) runs on `modelctl up` (Envoy,
Prometheus scraping every 2 s, Alertmanager with an on-call email) with `modelctl traffic`
throughout. The analysis runs on a short schedule, as a CronJob would: every 10 s, `modelctl
canary analyze` then `modelctl up`. For each break kind a canary takes 20% of the traffic, is
broken under traffic, and the clock runs from the break until Envoy's route (its admin
`/config_dump`) gives the canary's cluster no weight:

- killed: every server of the canary gets SIGKILL (the supervisor restarts them after
  Kubernetes' 10 s back-off; callers get 503 meanwhile);
- 500: a canary of a version answering 500 on real rows (tests/faults.py); the clock starts when
  Envoy first routes to it;
- hang: every server of the canary gets SIGSTOP: requests hang until the route's 10 s timeout
  (callers get 504).

Beside it, what Flagger's documented settings give for the same evidence: a rollback after
`interval x threshold` (docs/gitbook/usage/deployment-strategies.md), with its example's
threshold 10 at this 10 s interval, and at the example's own 1 m interval. Every answer that is
not a 2xx from the stable version is what the bench measures, not a failure of it; the bench
fails if the analysis makes any other decision, or a break is not rolled back within 300 s.

Run: `python -m bench.safety` (about 6 minutes); writes bench/safety/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelctl.core import contract, yamlio
from tests import pipeline_repo
from tests.factories import run_git, stack_doc
from tests.faults import BROKEN, add_broken_version

MODEL = pipeline_repo.MODEL
STABLE, CANARY = "v1.0.0", "v1.1.0"
STACK = "dev"
NAMESPACE = "models-dev"
SCHEDULE_SECONDS = 10.0
FLAGGER_THRESHOLD = 10  # the documented example's (Flagger's own default is 1)
TIMING = ("--scrape-interval=2s", "--evaluation-interval=2s", "--alert-for=6s", "--group-wait=2s")
ANALYSIS = {"steps": [20, 50], "min_requests": 200, "error_margin": 0.02, "latency_margin": 1.0}
LIMIT_SECONDS = 300.0
RESULTS = Path(__file__).parent / "RESULTS.md"
ONCALL = {
    "name": "oncall-email",
    "severities": ["critical"],
    "email": {"to": "oncall@example.com", "from": "alerts@example.com", "smarthost": "smtp.example.com:587"},
}


def modelctl(root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelctl", "-C", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def up(root: Path) -> None:
    done = modelctl(root, "up", "--stack", STACK, *TIMING)
    if done.returncode != 0:
        raise SystemExit(f"modelctl up failed: {done.stderr}")


def servers(root: Path, version: str) -> list[dict[str, Any]]:
    rows = json.loads(modelctl(root, "ps", "--stack", STACK, "--json").stdout)["processes"]
    return [r for r in rows if r["kind"] == "server" and r.get("version") == version]


def gateway_admin(root: Path) -> str:
    state = json.loads((root / ".modelctl" / "run" / STACK / "state.json").read_text())
    return str(next(p["extra"]["admin"] for p in state["procs"].values() if "admin" in p.get("extra", {})))


def weight_at_gateway(admin: str, version: str) -> int:
    """The weight Envoy's routes give `version`'s cluster (0 when no route names it)."""
    cluster = contract.MESH_SOURCES["envoy"].version_value(NAMESPACE, MODEL, version)
    dump = httpx.get(f"{admin}/config_dump", params={"resource": "dynamic_route_configs"}, timeout=5).json()

    def walk(node: Any) -> int:
        if isinstance(node, dict):
            if node.get("name") == cluster and "weight" in node:
                return int(node["weight"])
            return sum(walk(v) for v in node.values())
        if isinstance(node, list):
            return sum(walk(v) for v in node)
        return 0

    return walk(dump)


def wait(what: str, ready: Callable[[], bool], seconds: float, every: float = 0.25) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return time.monotonic()
        time.sleep(every)
    raise SystemExit(f"{what}: not within {seconds:.0f} s")


class Schedule(threading.Thread):
    """`canary analyze` then `modelctl up` every SCHEDULE_SECONDS, as a CronJob would."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.stop, self.outcomes = root, threading.Event(), list[str]()

    def run(self) -> None:
        while not self.stop.wait(SCHEDULE_SECONDS):
            done = modelctl(self.root, "canary", "analyze", "--stack", STACK, "--json")
            if done.returncode in (0, 2, 3) and done.stdout:
                self.outcomes += [a["outcome"] for a in json.loads(done.stdout)["analyses"]]
            up(self.root)


@dataclass(frozen=True)
class Measured:
    kind: str
    seconds: float
    alert_seconds: float | None
    reason: str


def break_canary(root: Path, kind: str, mailbox: Path) -> Measured:
    version = BROKEN if kind == "500" else CANARY
    admin = gateway_admin(root)
    done = modelctl(root, "canary", MODEL, version, "--stack", STACK)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    up(root)
    schedule, pids = Schedule(root), []
    if kind == "500":
        broke = wait("the broken canary routed", lambda: weight_at_gateway(admin, version) > 0, 60)
    else:
        wait("the canary routed", lambda: weight_at_gateway(admin, version) > 0, 60)
        time.sleep(5)  # the canary serves callers for a while before it breaks
        pids = [int(r["pid"]) for r in servers(root, version)]
        for pid in pids:
            os.kill(pid, signal.SIGKILL if kind == "killed" else signal.SIGSTOP)
        broke = time.monotonic()
    broke_at = time.time() - (time.monotonic() - broke)
    seen_before = set(mailbox.glob("*.eml"))
    schedule.start()
    try:
        safe = wait("rolled back", lambda: weight_at_gateway(admin, version) == 0, LIMIT_SECONDS, 0.2)
    finally:
        schedule.stop.set()
        schedule.join(timeout=120)
        if kind == "hang":
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
    if "rollback" not in schedule.outcomes or "promote" in schedule.outcomes:
        raise SystemExit(f"{kind}: the analysis decided {schedule.outcomes}, not a rollback")
    alert = _alert_after(mailbox, seen_before, version, broke_at)
    reason = run_git(root, "log", "-1", "--format=%b").splitlines()[0]
    modelctl(root, "release-hold", "clear", MODEL, version, "--stack", STACK, "--reason", "bench: next break")
    up(root)
    return Measured(kind, safe - broke, alert, reason)


def _alert_after(mailbox: Path, before: set[Path], version: str, broke_at: float) -> float | None:
    """Seconds from the break (`broke_at`, wall clock) to the first critical email naming
    `version` (waits up to 60 s after the rollback)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in sorted(set(mailbox.glob("*.eml")) - before):
            text = path.read_text(errors="replace")
            if version in text and (
                "ModelVersionFailingCallers" in text or "ModelVersionUnavailable" in text
            ):
                return path.stat().st_mtime - broke_at
        time.sleep(0.5)
    return None


def scratch_repo(folder: Path) -> Path:
    root = pipeline_repo.copy(pipeline_repo.build(folder / "template" / "repo"), folder / "run" / "repo")
    pipeline_repo.push_all(root)
    add_broken_version(root, pipeline_repo.remote(root))
    doc = stack_doc({STABLE: 100}, namespace=NAMESPACE)
    environment = doc["config"]["modelctl:environment"]
    environment["receivers"] = [ONCALL]
    doc["config"]["modelctl:releases"][MODEL]["analysis"] = ANALYSIS
    yamlio.dump_file(root / f"Pulumi.{STACK}.yaml", doc)
    run_git(root, "add", "-A")
    run_git(root, "commit", "-qm", "bench: dev on v1.0.0 with short analysis settings; a broken v1.2.0")
    return root


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        root = scratch_repo(Path(scratch))
        up(root)
        traffic = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelctl",
                "-C",
                str(root),
                "traffic",
                "--stack",
                STACK,
                "--requests",
                "10000000",
                "--rate",
                "100",
                "--users",
                "100",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            mailbox = root / ".modelctl" / "run" / STACK / "mailbox"
            measured = [break_canary(root, kind, mailbox) for kind in ("killed", "500", "hang")]
        finally:
            traffic.terminate()
            traffic.wait(timeout=30)
            modelctl(root, "down", "--stack", STACK)
    write(measured)
    print(RESULTS.read_text())
    return 0 if all(m.seconds <= 60 for m in measured) else 1


def write(measured: list[Measured]) -> None:
    flagger_here, flagger_example = SCHEDULE_SECONDS * FLAGGER_THRESHOLD, 60 * FLAGGER_THRESHOLD
    rows = [
        f"| {m.kind} | {m.seconds:.0f} s | "
        f"{'not delivered' if m.alert_seconds is None else f'{m.alert_seconds:.0f} s'} | "
        f"{flagger_here:.0f} s | {flagger_example:.0f} s | {m.reason[:90]} |"
        for m in measured
    ]
    RESULTS.write_text(
        "# Time to safety (python -m bench.safety)\n\n"
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, one run, on this 2-core machine: "
        f"analysis every {SCHEDULE_SECONDS:.0f} s (`canary analyze` then `modelctl up`), Prometheus "
        "scraping Envoy every 2 s, 100 requests/s, the canary at 20%.\n\n"
        "| break | break -> canary weight 0 at Envoy | break -> critical email | Flagger, interval 10 s x threshold 10 | Flagger's example, 1 m x 10 | the rollback's reason |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
