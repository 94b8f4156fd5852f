"""Start the server: load and verify, then serve on uvicorn until SIGTERM, draining in-flight requests."""

from __future__ import annotations

import gc
import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn

from modelctl.core.errors import UserError, UserErrors
from modelctl.core.servingspec import ServingSpec
from serving.app import ModelServer, create_app
from serving.compiled import reference_rows
from serving.model import load_model
from serving.monitor import DriftMonitor, load_profile
from serving.options import Settings

log = logging.getLogger("serving")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build(spec: ServingSpec, settings: Settings) -> ModelServer:
    """A server for the verified model and profile; raises UserError on any startup problem."""
    profile = load_profile(spec)
    model = load_model(spec, reference_rows(profile, spec.signature), settings.parity_tolerance)
    engine = model.metadata()
    if engine["fallback_from"]:
        log.warning(
            "serving with %s, not %s: %s", engine["engine"], engine["fallback_from"], engine["reason"]
        )
    else:
        log.info("predicting with %s (parity error %.3g)", engine["engine"], engine["parity_error"])
    drift = DriftMonitor(profile, spec.signature, settings.drift_window)
    return ModelServer(spec, model, drift, settings)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; UserError when the address is taken or unusable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(
            f"{host}:{port}", f"cannot listen there ({exc.strerror})", "pick another --port or --host"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    spec: ServingSpec,
    settings: Settings,
    host: str,
    port: int,
    grace_s: int = 25,
    *,
    listening: socket.socket | None = None,
    access_log: bool = False,
) -> int:
    """Serve until SIGTERM/SIGINT; the exit code (2 with one log line if startup fails).

    `listening` is a socket already bound to host:port (see `bind`); without one, it is bound here.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    try:
        sock = listening or bind(host, port)
        server = build(spec, settings)
    except (UserError, UserErrors) as exc:
        log.error("cannot start: %s", str(exc).replace("\n", "; "))
        return 2
    # The loaded model's objects live as long as the process: keep the collector from
    # walking them again and again (each full collection took ~32 ms, the whole p99 tail).
    gc.collect()
    gc.freeze()
    log.info("serving %s %s (sha256 %s) on %s:%d", spec.model, spec.version, spec.sha256[:12], host, port)
    config = uvicorn.Config(
        create_app(server),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=access_log,
        proxy_headers=False,  # the client address is not used; skip its per-request rewrite
        server_header=False,
        log_config=None,
        timeout_keep_alive=75,  # above typical proxy idle timeouts, so proxies close first
        timeout_graceful_shutdown=grace_s,
    )
    runner = uvicorn.Server(config)
    # uvicorn drains on SIGTERM, then re-raises the signal to the handler found at start;
    # with this one, a drained shutdown ends with exit code 0 instead of death by signal.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _drained)
    runner.run(sockets=[sock])
    return 0 if runner.started else 1


def _drained(signum: int, frame: FrameType | None) -> None:
    log.info("drained after %s; exiting", signal.Signals(signum).name)
