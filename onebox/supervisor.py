"""`python -m onebox.supervisor RUN_DIR`: the local stack's kubelet for model servers.

It runs the pods that `pods.json` in RUN_DIR lists (written atomically by `modelctl up`), as its
own children, and writes what it sees to `pods-status.json`: pid, restarts, the last exit (code
or signal) and the state (`running`, or `waiting` in CrashLoopBackOff). A server that exits is
started again, on the same port (a pod keeps its address across container restarts), after
Kubernetes' crash-loop back-off: 10 s, doubling, at most 5 minutes, back to 10 s once it has run
10 minutes (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#container-restarts).
A pod no longer listed is stopped (SIGTERM, SIGKILL after 30 s). On SIGTERM (`modelctl down`)
it stops every pod and exits. Pods a previous supervisor started and that still run are adopted:
watched through /proc, their exit status is not ours to read.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onebox import processes
from onebox.processes import Proc

DESIRED = "pods.json"
STATUS = "pods-status.json"
BACKOFF_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
BACKOFF_RESET_SECONDS = 600.0
TICK_SECONDS = 0.2


@dataclass
class Pod:
    """One pod's container as the supervisor sees it."""

    proc: Proc
    restarts: int = 0
    started: float = 0.0  # time.time() of the current or last start
    backoff: float = BACKOFF_SECONDS
    next_start: float | None = None  # set while waiting in back-off
    last_exit: dict[str, Any] = field(default_factory=dict)
    adopted: bool = False

    def status(self, now: float) -> dict[str, Any]:
        waiting = self.next_start is not None
        return {
            "pid": 0 if waiting else self.proc.pid,
            "start_ticks": 0 if waiting else self.proc.start_ticks,
            "state": "waiting" if waiting else "running",
            "reason": "CrashLoopBackOff" if waiting else "",
            "restart_in_s": round(max(0.0, (self.next_start or now) - now), 1) if waiting else None,
            "restarts": self.restarts,
            "started_at": self.started,
            "last_exit": self.last_exit,
        }


def read_status(run: Path) -> dict[str, Any]:
    """`{"supervisor": pid, "updated": time, "pods": {name: status}}`, or {} before the first write."""
    try:
        data: dict[str, Any] = json.loads((run / STATUS).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data


def write_desired(run: Path, pods: list[Proc]) -> None:
    """The pods the supervisor should run, written atomically."""
    temporary = run / f".{DESIRED}.tmp"
    temporary.write_text(json.dumps({p.name: p.to_json() for p in pods}, indent=1), encoding="utf-8")
    os.replace(temporary, run / DESIRED)


class Supervisor:
    def __init__(self, run: Path) -> None:
        self.run = run
        self.pods: dict[str, Pod] = {}
        self.stopping: dict[str, threading.Thread] = {}
        self.env = dict(os.environ)
        self.desired_text = ""
        for name, status in read_status(run).get("pods", {}).items():
            self.adopt(name, status)

    def adopt(self, name: str, status: dict[str, Any]) -> None:
        desired = self.desired()
        if name not in desired or status.get("state") != "running":
            return
        proc = desired[name]
        proc.pid, proc.start_ticks = status["pid"], status["start_ticks"]
        if processes.running(proc):
            self.pods[name] = Pod(proc, status["restarts"], status["started_at"], adopted=True)

    def desired(self) -> dict[str, Proc]:
        try:
            text = (self.run / DESIRED).read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return {name: Proc.from_json(p) for name, p in json.loads(text).items()}

    def start(self, pod: Pod) -> None:
        pod.next_start = None
        pod.started = time.time()
        pod.adopted = False
        processes.start(pod.proc, {**self.env, **pod.proc.env}, Path.cwd())

    def exited(self, pod: Pod) -> bool:
        """Whether the pod's container has exited; records how."""
        if pod.next_start is not None:
            return False
        if pod.adopted:
            if processes.running(pod.proc):
                return False
            pod.last_exit = {"code": None, "reason": "exited (adopted: status unknown)", "at": time.time()}
            return True
        try:
            pid, status = os.waitpid(pod.proc.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = pod.proc.pid, 0
        if pid == 0:
            return False
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            pod.last_exit = {"signal": signal.Signals(number).name, "code": 128 + number, "at": time.time()}
        else:
            pod.last_exit = {"code": os.WEXITSTATUS(status), "at": time.time()}
        return True

    def tick(self) -> bool:
        """One pass; whether anything changed."""
        changed = False
        now = time.time()
        text = (self.run / DESIRED).read_text(encoding="utf-8") if (self.run / DESIRED).exists() else "{}"
        if text != self.desired_text:
            self.desired_text = text
            desired = {name: Proc.from_json(p) for name, p in json.loads(text).items()}
            for name in list(self.pods):
                if name not in desired:
                    self.stop(self.pods.pop(name))
            for name, proc in desired.items():
                if name not in self.pods:
                    pod = Pod(proc)
                    self.pods[name] = pod
                    self.start(pod)
            changed = True
        for pod in self.pods.values():
            if self.exited(pod):
                ran = now - pod.started
                if ran >= BACKOFF_RESET_SECONDS:
                    pod.backoff = BACKOFF_SECONDS
                pod.next_start = now + pod.backoff
                pod.backoff = min(pod.backoff * 2, BACKOFF_MAX_SECONDS)
                print(
                    f"{pod.proc.name}: exited {pod.last_exit}; restarting in {pod.next_start - now:g} s",
                    flush=True,
                )
                changed = True
            elif pod.next_start is not None and now >= pod.next_start:
                pod.restarts += 1
                self.start(pod)
                print(f"{pod.proc.name}: restarted (pid {pod.proc.pid}, restart {pod.restarts})", flush=True)
                changed = True
        return changed

    def stop(self, pod: Pod) -> None:
        if pod.next_start is None:
            thread = threading.Thread(target=processes.stop, args=(pod.proc,), daemon=True)
            thread.start()
            self.stopping[pod.proc.name] = thread

    def write(self) -> None:
        now = time.time()
        data = {
            "supervisor": os.getpid(),
            "updated": now,
            "pods": {name: pod.status(now) for name, pod in self.pods.items()},
        }
        temporary = self.run / f".{STATUS}.tmp"
        temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(temporary, self.run / STATUS)

    def shutdown(self) -> None:
        for pod in self.pods.values():
            self.stop(pod)
        for thread in self.stopping.values():
            thread.join()
        self.pods.clear()
        self.write()


def main(argv: list[str]) -> int:
    run = Path(argv[0])
    supervisor = Supervisor(run)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    supervisor.write()
    print(f"supervisor: pid {os.getpid()}, pods from {run / DESIRED}", flush=True)
    while not stopped.is_set():
        supervisor.tick()
        supervisor.write()  # every tick: `updated` is the supervisor's heartbeat, restart_in_s counts down
        for name, thread in list(supervisor.stopping.items()):
            if not thread.is_alive():
                del supervisor.stopping[name]
        stopped.wait(TICK_SECONDS)
    supervisor.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
