"""User-facing errors: one line naming the file, the key, what is wrong and what to do."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits with code 2."""

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
