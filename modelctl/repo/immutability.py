"""A merged version record never changes, except its status; revoked is final; a deprecated
version never gains traffic; a hold is lifted in a change of its own."""

from __future__ import annotations

from pathlib import Path

from modelctl.core.errors import UserError
from modelctl.core.releases import CLEAR_HOLD
from modelctl.core.state import State, model_file, parse_model, parse_stack
from modelctl.repo import gitutil
from modelctl.repo.state import Revision


def changes_since(state: State, base_rev: str) -> list[UserError]:
    """Every edit of a version record that exists at `base_rev`, other than a status change."""
    commit = gitutil.resolve(state.root, base_rev)
    base_files = Revision(state.root, commit)
    errors: list[UserError] = []
    for name, head in state.models.items():
        text = base_files.read(model_file(name))
        if text is None:
            continue
        base = parse_model(text, model_file(name))
        errors += _record_changes(base.versions, head.versions, model_file(name), base_rev)
    errors += _removed_models(state.root, commit, set(state.models), base_rev)
    errors += _deprecated_gaining_traffic(state, commit, base_rev)
    errors += _holds_lifted_with_traffic(state, commit, base_rev)
    return errors


def _holds_lifted_with_traffic(state: State, commit: str, base_rev: str) -> list[UserError]:
    """A hold lifted in the same change that routes requests to its version: the clearing (with
    its reason) must be a reviewed change of its own, so nobody lifts a hold unnoticed."""
    errors = []
    for stack in state.stacks.values():
        text = Revision(state.root, commit).read(stack.file)
        base_releases = parse_stack(text, stack.name).config.releases if text else {}
        for model_name, release in stack.config.releases.items():
            base = base_releases.get(model_name)
            if base is None:
                continue
            for path, version in release.routed():
                if version in base.held and version not in release.held:
                    errors.append(
                        UserError(
                            stack.file,
                            f"{version} of {model_name} was held at {base_rev} ({base.held[version].reason}) "
                            f"and this change both lifts the hold and routes requests to it at {path}",
                            f"clear the hold in a change of its own first: "
                            f"modelctl {CLEAR_HOLD} {model_name} {version} --stack {stack.name} --reason '...'",
                            key=f"config.modelctl:releases.{model_name}.{path}",
                        )
                    )
    return errors


def _deprecated_gaining_traffic(state: State, commit: str, base_rev: str) -> list[UserError]:
    """A deprecated version may keep the traffic it had at the base, never gain more."""
    errors = []
    for stack in state.stacks.values():
        text = Revision(state.root, commit).read(stack.file)
        base_releases = parse_stack(text, stack.name).config.releases if text else {}
        for model_name, release in stack.config.releases.items():
            versions = state.models[model_name].versions
            before = base_releases[model_name].traffic if model_name in base_releases else {}
            for version, weight in release.traffic.items():
                if versions[version].status == "deprecated" and weight > before.get(version, 0):
                    errors.append(
                        UserError(
                            stack.file,
                            f"deprecated version {version} of {model_name} gains traffic "
                            f"({before.get(version, 0)}% on {base_rev}, {weight}% now)",
                            "route the new traffic to an active version",
                            key=f"config.modelctl:releases.{model_name}.traffic.{version}",
                        )
                    )
    return errors


def _record_changes(base: dict, head: dict, display: str, base_rev: str) -> list[UserError]:  # type: ignore[type-arg]
    errors = []
    for version, old in base.items():
        key = f"versions.{version}"
        new = head.get(version)
        if new is None:
            errors.append(
                UserError(
                    display,
                    f"version {version} was removed (it exists on {base_rev})",
                    "restore it; mark it deprecated or revoked instead",
                    key=key,
                )
            )
            continue
        before, after = old.model_dump(exclude={"status"}), new.model_dump(exclude={"status"})
        for field in sorted(k for k in before if before[k] != after[k]):
            errors.append(
                UserError(
                    display,
                    f"{field} of registered version {version} changed since {base_rev}",
                    "version records are immutable; register a new version instead",
                    key=f"{key}.{field}",
                )
            )
        if old.status == "revoked" and new.status != "revoked":
            errors.append(
                UserError(
                    display,
                    f"version {version} was revoked on {base_rev} and cannot be reinstated",
                    "register a new version instead",
                    key=f"{key}.status",
                )
            )
    return errors


def _removed_models(root: Path, commit: str, present: set[str], base_rev: str) -> list[UserError]:
    base_models = set(Revision(root, commit).model_names())
    return [
        UserError(
            model_file(name),
            f"model {name} was removed (it exists on {base_rev})",
            "restore it; revoke its versions instead",
        )
        for name in sorted(base_models - present)
    ]
