"""Which types a skops artifact may have trusted: the repository's reviewed allow-list.

skops constructs only its default types (scikit-learn estimators, numpy and scipy arrays and
ufuncs, Python containers) unless the loader names more as trusted. Naming whatever
`skops.io.get_untrusted_types` lists is the same as `trusted=True`, which skops removed after
CVE-2024-37065: an artifact holding `FunctionTransformer(func=os.system)` lists `posix.system`.
So the names an artifact may have trusted come from `models/trusted-types.yaml` (namespaces of the
ML stack, and single types a pipeline needs, each added in a reviewed commit), and never from the
artifact. `DENIED` is refused even where that file covers it: modules and functions that run
code, start processes, reach files, the network or the interpreter (skops' security notes;
CVE-2024-37065; CVE-2025-54412 for `operator`).

Everything that records or loads trusted types goes through here: `register` (what it records),
the state checks (what a record may list), the pipeline's stages (what they load with) and the
model server (`DENIED` again on the record's list it is started with). `modelctl drift` loads no
artifact, only the profile, an .npz read without pickle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelctl.core.errors import UserError, collect

ALLOW_LIST_FILE = "models/trusted-types.yaml"
_CODE = "runs arbitrary code"
_PROCESS = "starts processes or calls the operating system"
_FILES = "reads or writes files"
_NETWORK = "opens network connections"
_PICKLE = "unpickles, which runs arbitrary code"
_INTERPRETER = "reaches the interpreter or native memory"
_ATTRIBUTES = "reaches any attribute or method of any object"
# A name is denied when it is one of these or inside one (`os` covers `os.system`).
DENIED: dict[str, str] = {
    **dict.fromkeys(("os", "posix", "nt", "subprocess", "pty", "multiprocessing", "signal"), _PROCESS),
    **dict.fromkeys(
        (
            "builtins.eval",
            "builtins.exec",
            "builtins.compile",
            "builtins.__import__",
            "builtins.breakpoint",
            "builtins.input",
            "importlib",
            "runpy",
            "code",
            "codeop",
            "types",
            "inspect",
            "threading",
            "_thread",
            "asyncio",
        ),
        _CODE,
    ),
    **dict.fromkeys(
        (
            "builtins.getattr",
            "builtins.setattr",
            "builtins.delattr",
            "builtins.globals",
            "builtins.locals",
            "builtins.vars",
            "operator",
            "_operator",
        ),
        _ATTRIBUTES,
    ),
    **dict.fromkeys(
        ("pickle", "_pickle", "cPickle", "copyreg", "marshal", "shelve", "dill", "cloudpickle", "joblib"),
        _PICKLE,
    ),
    **dict.fromkeys(
        (
            "builtins.open",
            "io",
            "_io",
            "pathlib",
            "shutil",
            "tempfile",
            "glob",
            "fileinput",
            "numpy.load",
            "numpy.loadtxt",
            "numpy.genfromtxt",
            "numpy.fromfile",
            "numpy.fromregex",
            "numpy.save",
            "numpy.savez",
            "numpy.savez_compressed",
            "numpy.savetxt",
            "numpy.memmap",
            "numpy.lib.npyio",
            "numpy.lib._npyio_impl",
            "numpy.lib.format",
            "scipy.io",
            "sklearn.datasets",
        ),
        _FILES,
    ),
    **dict.fromkeys(
        ("socket", "ssl", "http", "urllib", "urllib3", "requests", "ftplib", "smtplib", "webbrowser"),
        _NETWORK,
    ),
    **dict.fromkeys(
        (
            "sys",
            "gc",
            "ctypes",
            "_ctypes",
            "cffi",
            "numpy.ctypeslib",
            "numpy.testing",
            "numpy.distutils",
            "numpy.f2py",
            "sklearn.utils._testing",
            "sklearn.externals",
        ),
        _INTERPRETER,
    ),
}


def _within(name: str, namespace: str) -> bool:
    return name == namespace or name.startswith(namespace + ".")


def denied(name: str) -> str | None:
    """What `name` would do if trusted, when `DENIED` covers it; None otherwise."""
    return next((reason for prefix, reason in DENIED.items() if _within(name, prefix)), None)


@dataclass(frozen=True)
class AllowList:
    """The reviewed allow-list: `namespaces` (a name inside one is allowed) and single `types`."""

    namespaces: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def refusal(self, name: str) -> str | None:
        """Why `name` may not be trusted, or None when it may.

        `DENIED` wins over the allow-list: listing `builtins` never allows `builtins.eval`.
        """
        danger = denied(name)
        if danger:
            return f"trusted type {name} {danger}, and is never trusted"
        if name in self.types or any(_within(name, space) for space in self.namespaces):
            return None
        return f"trusted type {name} is not in the reviewed allow-list {ALLOW_LIST_FILE}"


def refusals(
    names: Iterable[str],
    allowed: AllowList,
    where: str,
    key: str = "",
    remedy: str = "rebuild the model without it",
) -> list[UserError]:
    """One error per name that may not be trusted, in order (an empty list when all may).

    `where`/`key` name the file and the YAML key of the list (each error adds the item's index);
    `remedy` is the fix offered first.
    """
    errors = []
    for index, name in enumerate(names):
        reason = allowed.refusal(name)
        if reason:
            fix = remedy if denied(name) else f"{remedy}, or add it to {ALLOW_LIST_FILE} in a reviewed commit"
            errors.append(UserError(where, reason, fix, key=f"{key}.{index}" if key else ""))
    return errors


def reviewed(names: Iterable[str], allowed: AllowList, where: str) -> list[str]:
    """`names` when the allow-list allows every one, to pass to skops as `trusted`.

    Raises
    ------
    UserError, UserErrors
        One line per refused name.
    """
    listed = list(names)
    collect(refusals(listed, allowed, where))
    return listed
