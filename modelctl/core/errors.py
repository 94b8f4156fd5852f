"""User-facing errors: one line naming the file, the key, what is wrong and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits with code 1."""

    def __init__(self, where: str, problem: str, fix: str, key: str = "") -> None:
        self.where = where
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        key = f" {self.key}:" if self.key else ""
        return f"{self.where}:{key} {self.problem}; {self.fix}"


class UserErrors(Exception):
    """Several independent problems found in one pass, reported one per line."""

    def __init__(self, errors: list[UserError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def as_list(exc: UserError | UserErrors) -> list[UserError]:
    return exc.errors if isinstance(exc, UserErrors) else [exc]


def collect(errors: list[UserError]) -> None:
    """Raise the errors found, if any: one alone as itself, several together."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise UserErrors(errors)


# ---------------------------------------------------------------- errors that recur


def one_of(names: Iterable[str]) -> str:
    """The choices offered in a fix: "a, b, c", or "none"."""
    return ", ".join(names) or "none"


def unknown_version(where: str, model: str, version: str, known: Iterable[str], key: str = "") -> UserError:
    """A version the registry (models/<model>/model.yaml) does not hold.

    Parameters
    ----------
    where
        The file the version was named in (a stack file, or the model file).
    model, version
        What was asked for.
    known
        The registered versions, in the order to offer them.
    key
        The YAML key naming the version, if any.
    """
    return UserError(
        where,
        f"version {version} of {model} is not registered",
        f"register it first or use one of: {one_of(known)}",
        key=key,
    )


def revoked_version(where: str, model: str, version: str, fix: str, key: str = "") -> UserError:
    """A revoked version asked to serve, or to change status: `fix` says what to do instead."""
    return UserError(where, f"version {version} of {model} is revoked", fix, key=key)


def unknown_name(where: str, kind: str, name: str, known: Iterable[str], key: str = "") -> UserError:
    """A model or stack (`kind`) that does not exist: "no model named 'x'; did you mean 'y'? (known: a,
    y)", the suggestion being difflib's closest match (ratio at least 0.6), or "use one of: a, b"."""
    choices = list(known)
    close = difflib.get_close_matches(name, choices, n=1)
    fix = (
        f"did you mean {close[0]!r}? (known: {one_of(choices)})"
        if close
        else f"use one of: {one_of(choices)}"
    )
    return UserError(where, f"no {kind} named {name!r}", fix, key=key)


def unknown_key(where: str, key: str, name: str, known: Iterable[str], prefix: str = "") -> UserError:
    """A key the schema does not know at `key` (its YAML path), with the closest known one offered.

    The suggestion is difflib's closest match (ratio at least 0.6) among `known`; `name` and
    `known` are compared without `prefix` (a config namespace such as 'modelctl:'), which every
    one of them carries in the message.
    """
    choices = sorted(set(known))
    close = difflib.get_close_matches(name, choices, n=1)
    fix = (
        f"did you mean {prefix + close[0]!r}? (or remove it)"
        if close
        else f"remove it; known keys: {one_of(prefix + c for c in choices)}"
    )
    return UserError(where, f"unknown key {prefix + name!r}", fix, key=key)
