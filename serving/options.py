"""The server's settings and their command-line flags, shared by `python -m serving` and
`modelctl serve` (light: the CLI builds its parser from this without loading the server)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from modelctl.core.contract import HTTP_PORT, RECEIPT_KEYS_FILE, STORE_PASSWORD_FILE

# The largest |compiled - native| probability difference allowed on the reference rows: for
# formats computed in float64, and for ONNX graphs, computed in float32 (measured in
# serving/formats/onnx.py).
PARITY_TOLERANCE = 1e-9
FLOAT32_PARITY_TOLERANCE = 1e-6
# How long a prediction's receipt takes its label: fraud labels come with chargebacks, weeks later.
RECEIPT_TTL_S = 35 * 86400.0


@dataclass(frozen=True)
class Settings:
    max_batch_rows: int = 64
    max_wait_ms: float = 1.0
    max_rows: int = 1000
    max_body_bytes: int = 1 << 20
    feedback_store: str = ""
    feedback_secret: str = ""
    feedback_ttl_s: float = RECEIPT_TTL_S
    drift_window: int = 10_000
    drift_interval_s: float = 30.0
    parity_tolerance: float | None = None  # None: the format's own (serving.formats.RUNTIMES)
    prediction_log: str = ""
    prediction_log_sample: float = 1.0


def _number(text: str, kind: type[float] = float) -> float:
    try:
        return kind(text)
    except ValueError:
        whole = " whole" if kind is int else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a{whole} number") from None


def positive(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def port(text: str) -> int:
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535; 0: any free one)")
    return value


def not_negative(text: str) -> float:
    value = _number(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text} is not a number of at least 0")
    return value


def above_zero(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1")
    return value


def add_server_options(parser: argparse.ArgumentParser, host: str) -> None:
    """Listening address, batching, limits, feedback (store, secret, receipt lifetime), drift, parity, prediction log, shutdown,
    access log."""
    d = Settings()
    parser.add_argument("--host", default=host, help="address to listen on")
    parser.add_argument("--port", type=port, default=HTTP_PORT, help="port for the API, health and metrics")
    parser.add_argument(
        "--max-batch-rows", type=positive, default=d.max_batch_rows, help="rows per model call"
    )
    parser.add_argument(
        "--max-wait-ms", type=not_negative, default=d.max_wait_ms,
        help="while a batch holds fewer requests than the largest of the last 16: the longest gap it waits for the next one (4x in all; 0: one event-loop turn)",
    )  # fmt: skip
    parser.add_argument("--max-rows", type=positive, default=d.max_rows, help="rows allowed in one request")
    parser.add_argument(
        "--max-body-bytes", type=positive, default=d.max_body_bytes, help="request body limit"
    )
    parser.add_argument(
        "--feedback-store", default=d.feedback_store, metavar="URL",
        help="the Redis that remembers which predictions took their label (redis://host:port/db; "
        "its password in the secret folder's store-password)",
    )  # fmt: skip
    parser.add_argument(
        "--feedback-secret", default=d.feedback_secret, metavar="DIR",
        help=f"the folder of the receipt keys ({RECEIPT_KEYS_FILE}: one per line, the first signs) and the "
        f"store's password ({STORE_PASSWORD_FILE}); without it and --feedback-store no receipts, no labels",
    )  # fmt: skip
    parser.add_argument(
        "--feedback-ttl-s", type=above_zero, default=d.feedback_ttl_s,
        help="seconds a prediction's receipt takes its label",
    )  # fmt: skip
    parser.add_argument(
        "--drift-window", type=positive, default=d.drift_window, help="rows in the drift window"
    )
    parser.add_argument(
        "--drift-interval-s",
        type=above_zero,
        default=d.drift_interval_s,
        help="seconds between drift updates",
    )
    parser.add_argument(
        "--parity-tolerance", type=not_negative, default=d.parity_tolerance,
        help="largest probability difference allowed between a compiled engine and the format's own "
        f"library (default: {PARITY_TOLERANCE:g}; {FLOAT32_PARITY_TOLERANCE:g} for onnx, computed in float32)",
    )  # fmt: skip
    parser.add_argument(
        "--prediction-log", default=d.prediction_log, metavar="FILE",
        help="append sampled predictions as JSON lines to FILE ('-': standard output; see serving/predlog.py)",
    )  # fmt: skip
    parser.add_argument(
        "--prediction-log-sample", type=fraction, default=d.prediction_log_sample,
        help="share of requests in the prediction log, chosen by a hash of the request id (1: all)",
    )  # fmt: skip
    parser.add_argument(
        "--grace-s", type=positive, default=25, help="longest drain of in-flight requests on SIGTERM"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs CPU)")
    for action in parser._actions:
        if (
            action.default not in (None, False, argparse.SUPPRESS)
            and action.help
            and "%(default)" not in action.help
        ):
            action.help += " (default: %(default)s)"


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
