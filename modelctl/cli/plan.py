"""`modelctl plan`: the rendered-manifest diff and traffic changes between a git revision and now.

The base defaults to `origin/main` (what CI last deployed, and what a pull request is
compared with) when that exists, else `HEAD` (your uncommitted edits). Exit code 0 means
nothing changes, 2 that something does, 1 an error (`modelctl --help` lists the convention). A
change that removes every model of a stack (a deleted stack file, emptied releases) is refused
unless `--allow-destroy` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from modelctl.cli import EXIT_FINDING, EXIT_OK, Result, add_command, repo_root
from modelctl.cli.release import describe
from modelctl.core.errors import UserError, UserErrors, collect
from modelctl.core.releases import restores
from modelctl.core.schema import Release
from modelctl.core.state import CONFIG_NAMESPACE, State, stack_file
from modelctl.repo import gitutil
from modelctl.repo.state import read_state
from modelctl.repo.transaction import unified_diff

DEFAULT_BASE = "origin/main"
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(sub: SubParsers) -> None:
    parser = add_command(
        sub, "plan", run, "diff the rendered manifests and traffic between a revision and the working tree"
    )
    parser.add_argument(
        "--base",
        metavar="REV",
        help=f"compare with this revision (default: {DEFAULT_BASE} if present, else HEAD)",
    )
    parser.add_argument("--stack", help="only this stack")
    parser.add_argument(
        "--allow-destroy",
        action="store_true",
        help="accept a change that removes every model of a stack (refused otherwise)",
    )


@dataclass(frozen=True)
class StackPlan:
    name: str
    production: bool
    traffic: list[dict[str, str]]
    added: list[str]
    removed: list[str]
    changed: list[str]
    diff: str
    # Every model the stack served is gone: `pulumi up` would delete all of their objects.
    destroys: bool = False
    # The change only rolls back (releases.restores) and changes nothing else of the stack.
    restores: bool = False

    @property
    def changes(self) -> bool:
        return bool(self.traffic or self.diff)


def run(args: argparse.Namespace) -> Result:
    root = repo_root(args)
    base = args.base or default_base(root)
    commit = gitutil.resolve(root, base)
    head = read_state(root)
    before = read_state(root, commit)
    plans = [plan_stack(before, head, name) for name in stack_names(before, head, args.stack)]
    if not args.allow_destroy:
        collect([destroy_refused(plan) for plan in plans if plan.destroys])
    changed = any(p.changes for p in plans)
    data: dict[str, Any] = {
        "base": base,
        "commit": commit,
        "changed": changed,
        "stacks": {p.name: _plan_data(p) for p in plans},
    }
    return Result(data, _text(base, plans), EXIT_FINDING if changed else EXIT_OK)


def stack_names(before: State, after: State, only: str | None) -> list[str]:
    if only and only not in before.stacks:
        after.stack(only)  # refuses a stack that exists on neither side
    return [only] if only else sorted(set(before.stacks) | set(after.stacks))


def default_base(root: Path) -> str:
    has_remote = gitutil.git(root, "rev-parse", "--verify", "--quiet", DEFAULT_BASE, check=False).strip()
    return DEFAULT_BASE if has_remote else "HEAD"


def plan_stack(before: State, after: State, name: str) -> StackPlan:
    # Imported when used: the serving image runs `modelctl fetch` without the infra shell.
    from infra.render import render_files

    # A model whose record and release are the same on both sides renders the same files.
    models = _changed_models(before, after, name)
    old = render_files(before, name, models) if name in before.stacks else {}
    new = render_files(after, name, models) if name in after.stacks else {}
    diff = "".join(
        unified_diff(f"{name}/{file}", old.get(file, ""), new.get(file, ""))
        for file in sorted(set(old) | set(new))
        if old.get(file) != new.get(file)
    )
    return StackPlan(
        name=name,
        production=(after.stacks.get(name) or before.stacks[name]).config.environment.production,
        traffic=traffic_changes(before, after, name),
        added=sorted(set(new) - set(old)),
        removed=sorted(set(old) - set(new)),
        changed=sorted(f for f in set(old) & set(new) if old[f] != new[f]),
        diff=diff,
        destroys=bool(_releases(before, name)) and not _releases(after, name),
        restores=bool(diff) and _only_restores(before, after, name, new, models),
    )


def _changed_models(before: State, after: State, name: str) -> set[str] | None:
    """The models whose objects on stack `name` may differ between the two states; None (all)
    where the stack itself changed."""
    old, new = before.stacks.get(name), after.stacks.get(name)
    if old is None or new is None or old.config.environment != new.config.environment:
        return None
    if (old.secret_keys, old.plaintext_keys) != (new.secret_keys, new.plaintext_keys):
        return None
    return {
        model
        for model in set(old.config.releases) | set(new.config.releases)
        if old.config.releases.get(model) != new.config.releases.get(model)
        or before.models.get(model) != after.models.get(model)
    }


def _only_restores(
    before: State, after: State, name: str, rendered: dict[str, str], models: set[str] | None
) -> bool:
    """Every release of the stack restores (releases.restores), and the base rendered with the new
    releases gives these very files (of `models`, None: all): nothing but the releases changed."""
    from infra.render import render_files

    if name not in before.stacks or name not in after.stacks:
        return False
    old, new = _releases(before, name), _releases(after, name)
    if not all(restores(old.get(model), new.get(model)) for model in old.keys() | new.keys()):
        return False
    stack = before.stacks[name]
    config = stack.config.model_copy(update={"releases": new})
    rolled_back = dataclasses.replace(
        before, stacks={**before.stacks, name: dataclasses.replace(stack, config=config)}
    )
    try:
        return render_files(rolled_back, name, models) == rendered
    except (UserError, UserErrors):
        return False


def _releases(state: State, name: str) -> dict[str, Release]:
    return state.stacks[name].config.releases if name in state.stacks else {}


def destroy_refused(plan: StackPlan) -> UserError:
    """A plan taking down every model of a stack, most often a misspelt or deleted key: refused
    unless asked for with --allow-destroy."""
    from infra.render import is_object_file

    objects = [name for name in plan.removed if is_object_file(name)]
    return UserError(
        stack_file(plan.name),
        f"this change removes every model of stack {plan.name} ({len(objects)} objects deleted on deploy)",
        "restore its modelctl:releases, or pass --allow-destroy if the stack is meant to go",
        key=f"config.{CONFIG_NAMESPACE}:releases",
    )


def traffic_changes(before: State, after: State, name: str) -> list[dict[str, str]]:
    old, new = _releases(before, name), _releases(after, name)
    rows = []
    for model in sorted(set(old) | set(new)):
        was, now = describe(old.get(model)), describe(new.get(model))
        if was != now:
            rows.append({"model": model, "before": was, "after": now})
    return rows


def _plan_data(plan: StackPlan) -> dict[str, Any]:
    return {
        "file": stack_file(plan.name),
        "production": plan.production,
        "destroys": plan.destroys,
        "restores": plan.restores,
        "changed": plan.changes,
        "traffic": plan.traffic,
        "files": {"added": plan.added, "changed": plan.changed, "removed": plan.removed},
        "diff": plan.diff,
    }


def _text(base: str, plans: list[StackPlan]) -> str:
    lines = [f"plan against {base}:"]
    for plan in plans:
        if not plan.changes:
            lines.append(f"  {plan.name}: no changes")
            continue
        counts = f"{len(plan.added)} added, {len(plan.changed)} changed, {len(plan.removed)} removed"
        lines.append(f"  {plan.name}: {counts}" + (" (only rolls back)" if plan.restores else ""))
        lines += [f"    {row['model']}: {row['before']} -> {row['after']}" for row in plan.traffic]
    diffs = [plan.diff for plan in plans if plan.diff]
    return "\n".join(lines) + ("\n\n" + "".join(diffs).rstrip("\n") if diffs else "")
