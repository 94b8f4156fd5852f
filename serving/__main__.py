"""`python -m serving`: the model server, configured by MODELCTL_* variables, flags overriding.

The variables come from the registry record via the Pulumi program (see
modelctl/core/servingspec.py); the flags are for running it by hand.
"""

from __future__ import annotations

from serving import pin_threads

pin_threads()  # before anything imports scikit-learn

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from modelctl.core.contract import HTTP_PORT  # noqa: E402
from modelctl.core.errors import UserError  # noqa: E402
from modelctl.core.servingspec import ENV_PREFIX, ServingSpec  # noqa: E402
from serving.app import Settings  # noqa: E402
from serving.server import LOG_FORMAT, serve  # noqa: E402

# Flags that override one MODELCTL_* variable each.
SPEC_FLAGS = {
    "model": "MODEL",
    "version": "VERSION",
    "artifact": "ARTIFACT",
    "sha256": "SHA256",
    "profile": "PROFILE",
    "profile_sha256": "PROFILE_SHA256",
}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def not_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text} is not a number of at least 0")
    return value


def above_zero(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=HTTP_PORT, help="port for the API, health and metrics")
    for flag, variable in SPEC_FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", help=f"overrides {ENV_PREFIX}{variable}")
    parser.add_argument(
        "--max-batch-rows", type=positive, default=defaults.max_batch_rows, help="rows per model call"
    )
    parser.add_argument(
        "--max-wait-ms", type=not_negative, default=defaults.max_wait_ms,
        help="longest wait for a batch to reach the previous batch's size (0: one event-loop turn)",
    )  # fmt: skip
    parser.add_argument(
        "--max-rows", type=positive, default=defaults.max_rows, help="rows allowed in one request"
    )
    parser.add_argument("--max-body-bytes", type=positive, default=defaults.max_body_bytes)
    parser.add_argument("--feedback-capacity", type=positive, default=defaults.feedback_capacity)
    parser.add_argument("--feedback-ttl-s", type=above_zero, default=defaults.feedback_ttl_s)
    parser.add_argument("--feedback-window", type=positive, default=defaults.feedback_window)
    parser.add_argument("--drift-window", type=positive, default=defaults.drift_window)
    parser.add_argument("--drift-interval-s", type=above_zero, default=defaults.drift_interval_s)
    parser.add_argument(
        "--grace-s", type=positive, default=25, help="longest drain of in-flight requests on SIGTERM"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(os.environ)
    env.update(
        {ENV_PREFIX + var: getattr(args, flag) for flag, var in SPEC_FLAGS.items() if getattr(args, flag)}
    )
    try:
        spec = ServingSpec.from_env(env)
    except UserError as exc:
        logging.basicConfig(format=LOG_FORMAT)
        logging.getLogger("serving").error("cannot start: %s", exc)
        return 2
    settings = Settings(**{name: getattr(args, name) for name in Settings.__dataclass_fields__})
    return serve(spec, settings, args.host, args.port, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
