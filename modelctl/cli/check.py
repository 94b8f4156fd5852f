"""`modelctl check`: validate the whole desired state (and, with --base, immutability), then run the
policy rules on the objects each stack renders (every stack, or the one named by --stack)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from modelctl.api import check_lock, check_policies
from modelctl.cli import Result, add_command, repo_root
from modelctl.core.errors import collect
from modelctl.repo.clock import CLOCK_SKEW, misdated
from modelctl.repo.immutability import changes_since
from modelctl.repo.state import read_state


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "check",
        run,
        "validate models, stacks and dvc.lock, run the policies and (with --base) record immutability "
        "and commit dates",
    )
    parser.add_argument("--base", metavar="REV", help="also refuse edits to version records merged at REV")
    parser.add_argument("--stack", help="run the policies on this stack only (default: every stack)")


def run(args: argparse.Namespace) -> Result:
    root = repo_root(args)
    state = read_state(root)
    check_lock(root)
    if args.base:
        collect(changes_since(state, args.base))
    collect(misdated(root, args.base, datetime.now(UTC)))
    stacks = [state.stack(args.stack).name] if args.stack else sorted(state.stacks)
    objects = {name: check_policies(state, name) for name in stacks}
    versions = sum(len(m.versions) for m in state.models.values())
    data = {
        "ok": True,
        "models": sorted(state.models),
        "versions": versions,
        "stacks": sorted(state.stacks),
        "base": args.base,
        "policies": {"stacks": stacks, "objects": objects},
    }
    text = f"ok: {len(state.models)} models, {versions} versions, {len(state.stacks)} stacks valid"
    if stacks:
        text += f"; policies pass on {sum(objects.values())} objects of {', '.join(stacks)}"
    if args.base:
        text += f"; no registered version changed since {args.base}"
    minutes = CLOCK_SKEW.total_seconds() / 60
    text += f"; commit dates within {minutes:.0f} min of their parents' and this clock"
    return Result(data, text)
