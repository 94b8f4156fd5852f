"""A merged version record never changes, except its status; revoked is final."""

from __future__ import annotations

from pathlib import Path

from modelctl import gitutil
from modelctl.errors import UserError
from modelctl.state import State, model_file, parse_model


def changes_since(state: State, base_rev: str) -> list[UserError]:
    """Every edit of a version record that exists at `base_rev`, other than a status change."""
    commit = gitutil.resolve(state.root, base_rev)
    errors: list[UserError] = []
    for name, head in state.models.items():
        text = gitutil.show(state.root, commit, model_file(name))
        if text is None:
            continue
        base = parse_model(text, model_file(name))
        errors += _record_changes(base.versions, head.versions, model_file(name), base_rev)
    errors += _removed_models(state.root, commit, set(state.models), base_rev)
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
    listed = gitutil.git(root, "ls-tree", "-r", "--name-only", commit, "--", "models")
    base_models = {
        p.split("/")[1] for p in listed.splitlines() if p.endswith("/model.yaml") and p.count("/") == 2
    }
    return [
        UserError(
            model_file(name),
            f"model {name} was removed (it exists on {base_rev})",
            "restore it; revoke its versions instead",
        )
        for name in sorted(base_models - present)
    ]
