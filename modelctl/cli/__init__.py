"""The `modelctl` command line: one module per command group, each registering its parsers.

The CLI is a shell around the core: it may import `infra` and `policies` to render and
check, while the core modules never import the shells.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modelctl.core.errors import UserError, UserErrors, as_list
from modelctl.core.state import find_root

COMMAND_MODULES = [
    "modelctl.cli.check",
    "modelctl.cli.release",
    "modelctl.cli.plan",
    "modelctl.cli.registry",
    "modelctl.cli.render",
    "modelctl.cli.serve",
    "modelctl.cli.drift",
    "modelctl.cli.judge",
    "modelctl.cli.local",
]


@dataclass
class Result:
    """What a command produced: `data` for --json, `text` for a person."""

    data: Any
    text: str
    exit_code: int = 0


Handler = Callable[[argparse.Namespace], Result]


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler, help: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(handler=handler)
    return parser


def repo_root(args: argparse.Namespace) -> Path:
    return find_root(Path(args.repo or os.getcwd()))


def progress(message: str) -> None:
    """Progress for long work goes to stderr, so --json output stays parseable."""
    print(message, file=sys.stderr, flush=True)


def to_json(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelctl", description="GitOps delivery of machine-learning models to Kubernetes."
    )
    parser.add_argument("-C", "--repo", help="repository root (default: found from the current folder)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: Result = args.handler(args)
    except (UserError, UserErrors) as exc:
        errors = as_list(exc)
        if getattr(args, "json", False):
            print(to_json({"errors": [str(e) for e in errors]}))
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    try:
        print(to_json(result.data) if getattr(args, "json", False) else result.text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`modelctl ... | head`): not a failure of the command.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return result.exit_code
