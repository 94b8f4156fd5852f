"""`modelctl check`: validate the whole desired state (and, with --base, immutability)."""

from __future__ import annotations

import argparse

from modelctl.cli import Result, add_command, repo_root
from modelctl.errors import collect
from modelctl.immutability import changes_since
from modelctl.state import load_state


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(sub, "check", run, "validate models, stacks and (with --base) record immutability")
    parser.add_argument("--base", metavar="REV", help="also refuse edits to version records merged at REV")


def run(args: argparse.Namespace) -> Result:
    state = load_state(repo_root(args))
    if args.base:
        collect(changes_since(state, args.base))
    versions = sum(len(m.versions) for m in state.models.values())
    data = {
        "ok": True,
        "models": sorted(state.models),
        "versions": versions,
        "stacks": sorted(state.stacks),
        "base": args.base,
    }
    text = f"ok: {len(state.models)} models, {versions} versions, {len(state.stacks)} stacks valid"
    if args.base:
        text += f"; no registered version changed since {args.base}"
    return Result(data, text)
