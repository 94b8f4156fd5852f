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
from typing import Any, NoReturn, cast

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
  {EXIT_HOLD}  not decided yet: the judge held a canary, or an A/B experiment continues;
     look again later

--json and -C/--repo may be given before or after the command."""

COMMAND_MODULES = [
    "modelctl.cli.check",
    "modelctl.cli.release",
    "modelctl.cli.plan",
    "modelctl.cli.registry",
    "modelctl.cli.render",
    "modelctl.cli.serve",
    "modelctl.cli.drift",
    "modelctl.cli.canary",
    "modelctl.cli.experiment",
    "modelctl.cli.local",
    "modelctl.cli.shadow",
]


@dataclass
class Result:
    """What a command produced: `data` for --json, `text` for a person, and its exit code."""

    data: Any
    text: str
    exit_code: int = EXIT_OK


Handler = Callable[[argparse.Namespace], Result]


class UsageError(Exception):
    """A command line argparse refuses, as one line that suggests the command or flag meant."""


class ShowVersion(Exception):
    """`--version` was given: main prints the version (as JSON with --json) and exits 0."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are `UsageError`s, so `main` reports them like every other
    error (one line, exit 1, JSON with --json)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {_with_suggestion(self, message)} (see '{self.prog} --help')")


class _VersionAction(argparse.Action):
    def __call__(self, *_: Any) -> NoReturn:
        raise ShowVersion


def _version() -> str:
    return f"modelctl {importlib.metadata.version('modelctl')}"


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


def _mistyped_flag(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The usage error for an unknown `--flag` in `argv`, with the flag meant, or None if all are
    known. argparse reports a missing required flag before unknown ones, so `--stak dev` read as
    "--stack is required"."""
    command = parser
    for word in argv:
        if isinstance(command, Dispatch):
            command = command.commands.get(word, command.release)
            continue
        sub = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is not None and word in sub.choices:
            command = sub.choices[word]
    if isinstance(command, Dispatch):
        command = command.release
    flags = {o for a in command._actions for o in a.option_strings}
    unknown = [w for w in argv if w.startswith("--") and w.split("=")[0] not in flags]
    if not unknown:
        return None
    message = _with_suggestion(command, f"unrecognized arguments: {' '.join(unknown)}")
    return f"{command.prog}: {message} (see '{command.prog} --help')"


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler, help: str
) -> argparse.ArgumentParser:
    # argparse %-formats a command's help in the list of commands, not its description.
    parser = sub.add_parser(name, help=help.replace("%", "%%"), description=help)
    add_common_options(parser, default=argparse.SUPPRESS)
    parser.set_defaults(handler=handler, parser=parser)
    return parser


Builder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], argparse.ArgumentParser]


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, builders: dict[str, Builder]
) -> None:
    """Give the release command `name` (`canary`, `ab`, `shadow`) subcommands (`canary analyze`,
    `ab plan`, `shadow report`) built by `builders`, keeping its positional form
    (`canary MODEL VERSION`).

    argparse cannot give one parser both a positional and a subcommand, so the release parser
    is wrapped: arguments starting with a subcommand's name go to its parser, all others to the
    release parser, unchanged. Nothing happens when `name` is not registered."""
    release = sub.choices.get(name)
    if release is None:
        return
    holder = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]", Parser(prog=release.prog).add_subparsers()
    )
    sub.choices[name] = Dispatch(release, {command: build(holder) for command, build in builders.items()})


class Dispatch(argparse.ArgumentParser):
    """`<release> <subcommand> ...` to the subcommand's parser; every other `<release> ...` to the
    release parser (`release`)."""

    def __init__(
        self, release: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser]
    ) -> None:
        super().__init__(prog=release.prog, add_help=False)
        self.release = release
        self.commands = commands

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        arguments = list(args or [])
        if arguments[:1] in (["-h"], ["--help"]):
            self.print_help()
            self.exit()
        if arguments[:1] and arguments[0] in self.commands:
            return self.commands[arguments[0]].parse_known_args(arguments[1:], namespace)
        return self.release.parse_known_args(arguments, namespace)

    def format_help(self) -> str:
        also = "".join(
            f"\nalso: {parser.format_usage().strip()}\n  {parser.description}\n"
            for parser in self.commands.values()
        )
        return self.release.format_help() + also


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


def _report_errors(errors: list[str], as_json: bool) -> int:
    if as_json:
        print(to_json({"errors": errors}))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="modelctl",
        description="GitOps delivery of machine-learning models to Kubernetes.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version and exit")
    add_common_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before parsing succeeds there are no args to ask; a usage error still honours --json.
    wants_json = "--json" in argv
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as exc:
        missing = "the following arguments are required" in str(exc)
        return _report_errors([(missing and _mistyped_flag(parser, argv)) or str(exc)], wants_json)
    except ShowVersion:
        print(to_json({"version": _version().split()[1]}) if wants_json else _version())
        return EXIT_OK
    try:
        result: Result = args.handler(args)
    except (UserError, UserErrors) as exc:
        return _report_errors([str(e) for e in as_list(exc)], getattr(args, "json", False))
    except KeyboardInterrupt:
        return 130
    try:
        print(to_json(result.data) if getattr(args, "json", False) else result.text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`modelctl ... | head`): not a failure of the command.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return result.exit_code
