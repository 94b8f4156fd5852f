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

from modelctl.core.errors import UserError  # noqa: E402
from modelctl.core.servingspec import ENV_PREFIX, ServingSpec  # noqa: E402
from serving.options import add_server_options, settings_from  # noqa: E402
from serving.server import LOG_FORMAT, serve  # noqa: E402

# Flags that override one MODELCTL_* variable each.
SPEC_FLAGS = {
    "model": "MODEL",
    "version": "VERSION",
    "artifact": "ARTIFACT",
    "sha256": "SHA256",
    "format": "FORMAT",
    "profile": "PROFILE",
    "profile_sha256": "PROFILE_SHA256",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    add_server_options(parser, host="0.0.0.0")
    for flag, variable in SPEC_FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", help=f"overrides {ENV_PREFIX}{variable}")
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
    settings = settings_from(args)
    return serve(spec, settings, args.host, args.port, args.grace_s, access_log=args.access_log)


if __name__ == "__main__":
    sys.exit(main())
