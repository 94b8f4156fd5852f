"""Processes the local stack starts: each in its own session, logged to a file, known by pid.

A pid alone is not proof a process is ours (pids are reused), so a process counts as running only
while /proc/<pid>/stat still gives the start time recorded when we started it (argv cannot serve:
a server may rewrite its process title).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelctl.core.errors import UserError

STOP_SECONDS = 30.0


@dataclass
class Proc:
    """One started process; `fingerprint` changes when what it runs changes."""

    name: str
    kind: str
    argv: list[str]
    port: int
    health: str
    log: str
    fingerprint: str
    pid: int = 0
    start_ticks: int = 0  # field 22 of /proc/<pid>/stat: clock ticks after boot
    extra: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # added to the starting environment

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Proc:
        return cls(**data)


def free_port() -> int:
    """A port nothing listens on now on 127.0.0.1 (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(proc: Proc, env: dict[str, str], cwd: Path) -> None:
    """Start `proc` in a new session (a Ctrl-C in the terminal leaves the stack running)."""
    Path(proc.log).parent.mkdir(parents=True, exist_ok=True)
    with open(proc.log, "ab") as log:
        child = subprocess.Popen(
            proc.argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.pid = child.pid
    proc.start_ticks = _stat(child.pid)[1]


def _stat(pid: int) -> tuple[str, int]:
    """(state letter, start time in clock ticks) of `pid`; ("", 0) when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return "", 0
    return fields[0], int(fields[19])


def running(proc: Proc) -> bool:
    """Whether the process we started as `proc` is alive (not a zombie)."""
    if proc.pid <= 0:
        return False
    _reap(proc.pid)
    state, ticks = _stat(proc.pid)
    return state not in ("", "Z") and ticks == proc.start_ticks


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child (in-process callers), so it is not a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(proc: Proc, timeout: float = STOP_SECONDS) -> None:
    """SIGTERM (servers drain in-flight requests), then SIGKILL after `timeout` seconds."""
    if not running(proc):
        return
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running(proc):
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)


def signal_reload(proc: Proc) -> None:
    os.kill(proc.pid, signal.SIGHUP)


def healthy(url: str, expect: Callable[[httpx.Response], bool] | None = None) -> bool:
    """Whether `url` answers: 200 (or `expect`) over HTTP; a redis:// URL, any answer to PING
    (a store with a password answers it NOAUTH: it is up)."""
    if url.startswith("redis://"):
        return _redis_answers(url)
    try:
        response = httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return False
    return expect(response) if expect else response.status_code == 200


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return True
    except redis.RedisError:
        return False
    finally:
        client.close()


def wait_until_healthy(
    proc: Proc, timeout: float, expect: Callable[[httpx.Response], bool] | None = None
) -> None:
    """Poll `proc.health` until it answers; raises UserError with the log's last line if the process
    exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not healthy(proc.health, expect):
        if not running(proc):
            raise exited_while_starting(proc)
        if time.monotonic() > deadline:
            raise not_ready(proc, timeout)
        time.sleep(0.1)


def exited_while_starting(proc: Proc) -> UserError:
    """The error of a process that exited before it answered its probe, with its log's last line."""
    return UserError(proc.log, f"{proc.name} exited while starting: {last_line(proc.log)}", "see the log")


def not_ready(proc: Proc, timeout: float) -> UserError:
    """The error of a process not ready after `timeout` seconds, with its log's last line."""
    return UserError(
        proc.log, f"{proc.name} is not ready after {timeout:g} s: {last_line(proc.log)}", "see the log"
    )


def last_line(path: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def run_once(argv: Sequence[str], env: dict[str, str], cwd: Path, what: str) -> None:
    """Run a one-off command (an init container) to completion; UserError with its last line if it fails."""
    proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(
            what, f"failed: {lines[-1] if lines else proc.returncode}", "fix the cause and run up again"
        )
