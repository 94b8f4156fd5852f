"""The `modelctl` command line: one module per command group, each registering its parsers.

The CLI is a shell around the core: it may import `infra` and `policies` to render and
check, while the core modules never import the shells.

Exit codes, the same for every command (Terraform's `plan -detailed-exitcode` convention):
0 done, or nothing to change/nothing found; 1 an error, nothing changed; 2 a finding or a change
to act on (plan has changes, drift found, doctor found missing objects, the judge says
rollback); 3 the judge says hold (not enough evidence yet).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson

from modelctl.core.errors import UserError, UserErrors, as_list
from modelctl.core.state import find_root

# Positional arguments most commands share.
MODEL_HELP = "the model's name (models/<model>/model.yaml)"
VERSION_HELP = "a registered version of the model, like v1.2.0"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FINDING = 2
EXIT_HOLD = 3
EXIT_CODES = f"""exit codes (every command):
  {EXIT_OK}  done, or nothing to change / nothing found
  {EXIT_ERROR}  error: refused or failed, nothing was changed
  {EXIT_FINDING}  a finding to act on: plan has changes, drift found, doctor found missing
     objects, the judge decided rollback
  {EXIT_HOLD}  the judge decided hold: not enough evidence yet, look again later

--json and -C/--repo may be given before or after the command."""

COMMAND_MODULES = [
    "modelctl.cli.check",
    "modelctl.cli.release",
    "modelctl.cli.plan",
    "modelctl.cli.registry",
    "modelctl.cli.render",
    "modelctl.cli.serve",
    "modelctl.cli.drift",
    "modelctl.cli.judge",
    "modelctl.cli.experiment",
    "modelctl.cli.local",
]


@dataclass
class Result:
    """What a command produced: `data` for --json, `text` for a person, and its exit code."""

    data: Any
    text: str
    exit_code: int = EXIT_OK


Handler = Callable[[argparse.Namespace], Result]


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 1) that suggest the command or flag meant."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_ERROR, f"error: {self.prog}: {_with_suggestion(self, message)} (see '{self.prog} --help')\n"
        )


def _with_suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    choice = re.search(r"invalid choice: '([^']*)'", message)
    if choice:
        choices = [str(c) for a in parser._actions if a.choices for c in a.choices]
        close = difflib.get_close_matches(choice[1], choices, n=1)
        meant = f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(choices)}"
        return (
            f"{message[: message.index(' (choose from')]}; {meant}" if "(choose from" in message else message
        )
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    if unknown:
        flags = [o for a in parser._actions for o in a.option_strings]
        guesses = [
            difflib.get_close_matches(word.split("=")[0], flags, n=1)
            for word in unknown[1].split()
            if word.startswith("-")
        ]
        meant = " ".join(g[0] for g in guesses if g)
        return f"{message}; did you mean {meant}?" if meant else message
    return message


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler, help: str
) -> argparse.ArgumentParser:
    # argparse %-formats a command's help in the list of commands, not its description.
    parser = sub.add_parser(name, help=help.replace("%", "%%"), description=help)
    add_common_options(parser, default=argparse.SUPPRESS)
    parser.set_defaults(handler=handler, parser=parser)
    return parser


def add_common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--json and -C, on the main parser and (not overriding it unless given) on each command."""
    parser.add_argument(
        "--json", action="store_true", default=default or False, help="print machine-readable JSON"
    )
    parser.add_argument(
        "-C", "--repo", default=default, help="repository root (default: found from the current folder)"
    )


def add_lock_timeout(parser: argparse.ArgumentParser) -> None:
    """For commands that change the repository: how long to wait for another writer."""
    parser.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="wait this long for another modelctl command changing the repository (default: $MODELCTL_LOCK_TIMEOUT or 30)",
    )


def repo_root(args: argparse.Namespace) -> Path:
    return find_root(Path(args.repo or os.getcwd()))


def progress(message: str) -> None:
    """Progress for long work goes to stderr, so --json output stays parseable."""
    print(message, file=sys.stderr, flush=True)


def to_json(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="modelctl",
        description="GitOps delivery of machine-learning models to Kubernetes.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"modelctl {importlib.metadata.version('modelctl')}"
    )
    add_common_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        result: Result = args.handler(args)
    except (UserError, UserErrors) as exc:
        errors = as_list(exc)
        if getattr(args, "json", False):
            print(to_json({"errors": [str(e) for e in errors]}))
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    try:
        print(to_json(result.data) if getattr(args, "json", False) else result.text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`modelctl ... | head`): not a failure of the command.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return result.exit_code
