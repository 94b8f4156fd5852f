"""The whole desired state, every model file and every stack file, parsed and cross-checked.

Everything that reads the state goes through `load_state`, so an invalid state is refused the
same way by the CLI, the Pulumi program, the policy pack and the tests. It reads through a
`Source`: a folder (`Folder`, the working tree; the only file access in the core, read-only, so
the Pulumi program and the policy pack, which may not import `modelctl.repo`, read the state
the same way) or a git revision (`modelctl.repo.state.Revision`).
"""

from __future__ import annotations

import difflib
import hashlib
import types
import typing
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from modelctl.core import yamlio
from modelctl.core.credentials import dotted, find_credentials
from modelctl.core.errors import (
    UserError,
    UserErrors,
    as_list,
    collect,
    revoked_version,
    unknown_key,
    unknown_name,
    unknown_version,
)
from modelctl.core.schema import ModelFile, Release, StackConfig, TrustedTypesFile
from modelctl.core.trusted import ALLOW_LIST_FILE, AllowList, refusals

T = TypeVar("T")
STACK_PREFIX = "Pulumi."
CONFIG_NAMESPACE = "modelctl"
STRUCTURED_KEYS = ("environment", "releases")

_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it or check its spelling",
    "int_type": "write a whole number",
    "bool_type": "write true or false",
    "string_type": "write it as text",
    "float_type": "write a number",
    "dict_type": "write a mapping of keys to values",
    "list_type": "write a list",
    "literal_error": "use one of the allowed values",
    "too_short": "add at least one entry",
    "greater_than_equal": "raise it",
    "less_than_equal": "lower it",
    "greater_than": "raise it",
    "less_than": "lower it",
    "datetime_from_date_parsing": "write an ISO-8601 time like 2026-01-31T12:00:00Z",
    "datetime_parsing": "write an ISO-8601 time like 2026-01-31T12:00:00Z",
}


def pydantic_errors(
    exc: ValidationError,
    display: str,
    doc: Any,
    prefix: tuple[str, ...] = (),
    model: type[BaseModel] | None = None,
) -> list[UserError]:
    """One UserError per pydantic error, with the YAML key path (and line) it concerns; an unknown
    key of `model` comes with the closest known key at that place."""
    errors = []
    for err in exc.errors():
        loc = prefix + tuple(str(p) for p in err["loc"] if p != "[key]")
        line = yamlio.line_of(doc, tuple(_index(p) for p in loc))
        where = f"{display}:{line}" if line else display
        if err["type"] == "extra_forbidden" and model is not None:
            known = _keys_at(model, err["loc"][:-1])
            errors.append(unknown_key(where, ".".join(loc), str(err["loc"][-1]), known))
            continue
        message = err["msg"].removeprefix("Value error, ")
        if "; " in message:
            problem, fix = message.split("; ", 1)
        else:
            problem, fix = message[0].lower() + message[1:], _FIXES.get(err["type"], "correct the value")
        errors.append(UserError(where, problem, fix, key=".".join(loc)))
    return errors


def _keys_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the schema allows at `loc` (a pydantic error location) inside `model`."""
    annotation: Any = model
    for part in loc:
        cls = _model_in(annotation)
        fields = {f.alias or n: f for n, f in cls.model_fields.items()} if cls else {}
        if isinstance(part, str) and part in fields:
            annotation = fields[part].annotation
        else:  # a mapping's value or a list's item: the generic's last type argument
            annotation = (typing.get_args(_unwrap(annotation)) or (None,))[-1]
    cls = _model_in(annotation)
    return [f.alias or n for n, f in cls.model_fields.items()] if cls else []


def _unwrap(annotation: Any) -> Any:
    """The type inside Annotated[...] and Optional[...]."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    cls = _unwrap(annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _index(part: str) -> int | str:
    return int(part) if part.isdigit() else part


def parse(model: type[BaseModel], data: Any, display: str, doc: Any, prefix: tuple[str, ...] = ()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        collect(pydantic_errors(exc, display, doc, prefix, model))
        raise  # unreachable: collect raises for a non-empty list


@dataclass(frozen=True)
class Stack:
    name: str
    file: str
    config: StackConfig
    # Config keys of this namespace set with `pulumi config set --secret`.
    secret_keys: frozenset[str] = field(default_factory=frozenset)
    plaintext_keys: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class State:
    root: Path
    models: dict[str, ModelFile]
    stacks: dict[str, Stack]
    # What version records may list as trusted types (models/trusted-types.yaml).
    trusted: AllowList = field(default_factory=AllowList)

    def model(self, name: str) -> ModelFile:
        if name not in self.models:
            raise unknown_name(model_file(name), "model", name, sorted(self.models))
        return self.models[name]

    def stack(self, name: str) -> Stack:
        if name not in self.stacks:
            raise unknown_name(stack_file(name), "stack", name, sorted(self.stacks))
        return self.stacks[name]


def model_file(name: str) -> str:
    return f"models/{name}/model.yaml"


def stack_file(name: str) -> str:
    return f"{STACK_PREFIX}{name}.yaml"


class Source(Protocol):
    """Where the desired-state files are read from: a folder, or a git revision."""

    @property
    def root(self) -> Path:
        """The repository the files belong to."""
        ...

    def read(self, path: str) -> str | None:
        """The text of a repository-relative file, or None where it does not exist."""
        ...

    def model_names(self) -> list[str]:
        """The models with a models/<name>/model.yaml, sorted."""
        ...

    def stack_names(self) -> list[str]:
        """The stacks with a Pulumi.<name>.yaml, sorted."""
        ...


@dataclass(frozen=True)
class Folder:
    """The desired-state files of a folder (the working tree)."""

    root: Path

    def read(self, path: str) -> str | None:
        file = self.root / path
        return file.read_text(encoding="utf-8") if file.is_file() else None

    def model_names(self) -> list[str]:
        return sorted(p.parent.name for p in (self.root / "models").glob("*/model.yaml"))

    def stack_names(self) -> list[str]:
        return sorted(name for p in self.root.glob(f"{STACK_PREFIX}*.yaml") if (name := stack_name(p.name)))


def stack_name(filename: str) -> str | None:
    """The stack a top-level file name holds (Pulumi.<stack>.yaml), or None for any other file."""
    if filename.startswith(STACK_PREFIX) and filename.endswith(".yaml") and filename.count(".") == 2:
        return filename[len(STACK_PREFIX) : -len(".yaml")]
    return None


def _source(where: Path | Source) -> Source:
    return Folder(where) if isinstance(where, Path) else where


def find_root(start: Path) -> Path:
    """The repository root: the nearest folder at or above `start` holding Pulumi.yaml."""
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / "Pulumi.yaml").is_file():
            return folder
    raise UserError(
        str(start),
        "not inside a modelctl repository (no Pulumi.yaml found)",
        "run it from the repository or pass -C DIR",
    )


def read_checked(text: str, display: str, check: Callable[[Any], T]) -> T:
    """`check(doc)` of the YAML document in `text`, read by the fast reader (`yamlio.read`);
    where that reader is unsure, or `check` refuses what it read, `check` again on the round
    trip's reading (`yamlio.loads`), whose errors carry their lines. A valid file costs one
    fast reading; an invalid one is refused with the same messages as ever.

    Raises
    ------
    UserError, UserErrors
        What `check` raises on the round trip's reading, or a YAML syntax error.
    """
    try:
        return check(yamlio.read(text))
    except (yamlio.Unsure, UserError, UserErrors):
        return check(yamlio.loads(text, display))


class Checked(Protocol):
    """Where model files found valid are kept by their content (`modelctl.repo.state` keeps them
    in the git directory), so reading one again costs no YAML and no checks."""

    def get(self, key: str) -> bytes | None:
        """What `put` kept under `key`, or None."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Keep `data` under `key` (silently not, where it cannot be written)."""
        ...


def parse_model(text: str, display: str, checked: Checked | None = None) -> ModelFile:
    """One model file's text, validated (`display`: its path, for errors).

    With `checked`, a text found valid before (with this code) is taken from there as JSON, and
    one found valid now is kept, where the JSON reads back as the same record.
    """
    key = _checked_key(text, display) if checked is not None else ""
    found = checked.get(key) if checked is not None else None
    if found is not None:
        try:
            return ModelFile.model_validate_json(found)
        except ValidationError:
            pass
    model: ModelFile = read_checked(text, display, lambda doc: _model(doc, display))
    if checked is not None:
        data = model.model_dump_json(by_alias=True).encode()
        if ModelFile.model_validate_json(data) == model:
            checked.put(key, data)
    return model


def _checked_key(text: str, display: str) -> str:
    return hashlib.sha256(f"{_code()}\0{display}\0{text}".encode()).hexdigest()


@cache
def _code() -> str:
    """The code that reads and checks a model file: another version of it checks anew."""
    digest = hashlib.sha256()
    core = Path(__file__).parent
    for module in (
        "schema.py",
        "state.py",
        "credentials.py",
        "yamlio.py",
        "trusted.py",
        "errors.py",
        "formats",
    ):
        path = core / module
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(source.read_bytes())
    return digest.hexdigest()


def _model(doc: Any, display: str) -> ModelFile:
    collect(plaintext_credentials(display, doc, "remove it: a model file holds no credentials"))
    result: ModelFile = parse(ModelFile, doc, display, doc)
    expected = display.split("/")[-2] if display.count("/") >= 2 else result.name
    if result.name != expected:
        raise UserError(
            display,
            f"name {result.name!r} differs from its folder {expected!r}",
            "make them the same",
            key="name",
        )
    return result


def load_model(where: Path | Source, name: str, checked: Checked | None = None) -> ModelFile:
    """One model file, parsed (see `parse_model` for `checked`); `where` is a folder or a `Source`."""
    display = model_file(name)
    text = _source(where).read(display)
    if text is None:
        raise UserError(
            display, f"no model named {name!r}", "check the name or create models/<name>/model.yaml"
        )
    return parse_model(text, display, checked)


def parse_stack(text: str, name: str, only: Collection[str] | None = None) -> Stack:
    """One stack file: the structured keys of the namespace parsed, and every other key of the
    namespace either a secret a receiver names or refused as unknown, with a did-you-mean.

    With `only`, just the releases of those models are read and checked (the rest of the
    file whole): the stack as a command about those models needs it.
    """
    display = stack_file(name)
    if only is not None:
        text = _with_releases_of(text, only) or text
    return read_checked(text, display, lambda doc: _stack(doc or {}, name, display, only))


def _with_releases_of(text: str, only: Collection[str]) -> str | None:
    """The stack file's text with the lines of every other model's release cut out, or None
    where they cannot be cut out for sure (`yamlio.block_span`) or a model has no release."""
    releases = yamlio.block_span(text, ("config", f"{CONFIG_NAMESPACE}:releases"))
    entries = [yamlio.block_span(text, ("config", f"{CONFIG_NAMESPACE}:releases", model)) for model in only]
    if releases is None or any(entry is None for entry in entries):
        return None
    start, end = releases
    key_end = text.find("\n", start, end) + 1 or end
    kept = "".join(text[entry[0] : entry[1]] for entry in sorted(e for e in entries if e is not None))
    return text[:key_end] + kept + text[end:]


def _stack(doc: Any, name: str, display: str, only: Collection[str] | None) -> Stack:
    config = _releases_of(doc.get("config") or {}, only)
    ours = {
        key.split(":", 1)[1]: value
        for key, value in config.items()
        if isinstance(key, str) and key.startswith(f"{CONFIG_NAMESPACE}:")
    }
    structured = {f"{CONFIG_NAMESPACE}:{k}": ours[k] for k in STRUCTURED_KEYS if k in ours}
    collect(_stack_credentials(display, doc, config))
    misspelt = [k for k in ours if k not in STRUCTURED_KEYS and difflib.get_close_matches(k, STRUCTURED_KEYS)]
    collect(_unknown_config_keys(display, doc, misspelt, STRUCTURED_KEYS) + _foreign_namespaces(display, doc))
    parsed: StackConfig = parse(StackConfig, structured, display, doc, prefix=("config",))
    named = parsed.environment.secret_keys()
    unknown = set(ours) - set(STRUCTURED_KEYS) - set(named)
    collect(_unknown_config_keys(display, doc, unknown, [*STRUCTURED_KEYS, *named]))
    secure = {k for k, v in ours.items() if isinstance(v, dict) and set(v) == {"secure"}}
    return Stack(
        name=name,
        file=display,
        config=parsed,
        secret_keys=frozenset(secure),
        plaintext_keys=frozenset(set(ours) - secure - set(STRUCTURED_KEYS)),
    )


def plaintext_credentials(
    display: str, doc: Any, fix: str, section: Any = None, prefix: tuple[str, ...] = ()
) -> list[UserError]:
    """One error per value that looks like a credential (`modelctl.core.credentials`) in `section`
    of `doc` (all of it by default), `prefix` being the section's key path in `doc`."""
    errors = []
    for path, what in find_credentials(doc if section is None else section):
        full = (*prefix, *path)
        line = yamlio.line_of(doc, full)
        where = f"{display}:{line}" if line else display
        errors.append(
            UserError(where, f"this looks like {what}, written in plain text", fix, key=dotted(full))
        )
    return errors


def _releases_of(config: Any, only: Collection[str] | None) -> Any:
    """The config mapping with only the releases of the models `only` names (all: None)."""
    key = f"{CONFIG_NAMESPACE}:releases"
    releases = config.get(key) if isinstance(config, dict) else None
    if only is None or not isinstance(releases, dict):
        return config
    return {**config, key: {model: release for model, release in releases.items() if model in only}}


def _stack_credentials(display: str, doc: Any, config: Any) -> list[UserError]:
    """Credentials among the stack's plain `config` (of `doc`, where lines are looked up): any
    namespace's key, encrypted values (`secure:`) aside. The namespace's own secret keys are
    checked by `cross_check`."""
    fix = (
        f"set it with 'pulumi config set --secret {CONFIG_NAMESPACE}:<name>' "
        "and name that key in a receiver's '*_secret' field"
    )
    errors = []
    for key, value in config.items():
        namespace, _, name = str(key).partition(":")
        encrypted = isinstance(value, dict) and set(value) == {"secure"}
        if not encrypted and not (namespace == CONFIG_NAMESPACE and name not in STRUCTURED_KEYS):
            errors += plaintext_credentials(display, doc, fix, {key: value}, ("config",))
    return errors


def _unknown_config_keys(
    display: str, doc: Any, keys: Iterable[str], known: Iterable[str]
) -> list[UserError]:
    """Keys of the namespace that are neither structured nor a secret a receiver names."""
    errors = []
    for key in sorted(keys):
        full = f"{CONFIG_NAMESPACE}:{key}"
        line = yamlio.line_of(doc, ("config", full))
        where = f"{display}:{line}" if line else display
        errors.append(unknown_key(where, f"config.{full}", key, known, prefix=f"{CONFIG_NAMESPACE}:"))
    return errors


def _foreign_namespaces(display: str, doc: Any) -> list[UserError]:
    """Keys whose namespace is a misspelling of ours (`modelctll:releases`), which Pulumi would keep."""
    config = doc.get("config") or {}
    errors = []
    for key in config:
        namespace, _, rest = str(key).partition(":")
        if namespace != CONFIG_NAMESPACE and difflib.get_close_matches(
            namespace, [CONFIG_NAMESPACE], cutoff=0.8
        ):
            line = yamlio.line_of(doc, ("config", key))
            where = f"{display}:{line}" if line else display
            fix = f"did you mean '{CONFIG_NAMESPACE}:{rest}'? (or remove it)"
            errors.append(
                UserError(where, f"unknown config namespace {namespace!r}", fix, key=f"config.{key}")
            )
    return errors


def load_stack(where: Path | Source, name: str, only: Collection[str] | None = None) -> Stack:
    """One stack file, parsed (see `parse_stack` for `only`); `where` is a folder or a `Source`."""
    text = _source(where).read(stack_file(name))
    if text is None:
        raise UserError(
            stack_file(name), f"no stack named {name!r}", "check the name or create the stack file"
        )
    return parse_stack(text, name, only)


def load_allow_list(where: Path | Source) -> AllowList:
    """The reviewed allow-list of trusted types; without the file, nothing beyond skops' defaults."""
    text = _source(where).read(ALLOW_LIST_FILE)
    if text is None:
        return AllowList()
    parsed: TrustedTypesFile = read_checked(
        text, ALLOW_LIST_FILE, lambda doc: parse(TrustedTypesFile, doc or {}, ALLOW_LIST_FILE, doc)
    )
    return AllowList(tuple(parsed.namespaces), tuple(parsed.types))


def model_names(root: Path) -> list[str]:
    return Folder(root).model_names()


def load_state(
    where: Path | Source, only: Collection[str] | None = None, checked: Checked | None = None
) -> State:
    """Read and validate everything, from a folder or a `Source`; with `only`, what a command
    about those models needs: their files, and every stack with only their releases (the rules
    spanning files are checked on what was read). Naming a model that does not exist reads
    everything, so the error lists the models there are. `checked` keeps the model files found
    valid (see `parse_model`).

    Returns
    -------
    State
        Every model (or those of `only`) and every stack, with `root` the repository's folder.

    Raises
    ------
    UserError, UserErrors
        Every problem found, one per line: schema errors per file, then (when the files are
        valid) the rules that span files (`cross_check`).
    """
    source = _source(where)
    errors: list[UserError] = []
    models: dict[str, ModelFile] = {}
    stacks: dict[str, Stack] = {}
    names = source.model_names()
    if only is not None and set(only) <= set(names):
        names = [name for name in names if name in only]
    else:
        only = None
    for name in names:
        try:
            models[name] = load_model(source, name, checked)
        except (UserError, UserErrors) as exc:
            errors += as_list(exc)
    for name in source.stack_names():
        try:
            stacks[name] = load_stack(source, name, only)
        except (UserError, UserErrors) as exc:
            errors += as_list(exc)
    trusted = AllowList()
    try:
        trusted = load_allow_list(source)
    except (UserError, UserErrors) as exc:
        errors += as_list(exc)
    state = State(root=source.root, models=models, stacks=stacks, trusted=trusted)
    if not errors:
        errors += [_with_line(source, error) for error in cross_check(state)]
    collect(errors)
    return state


def _with_line(source: Source, error: UserError) -> UserError:
    """`error` with the line of its key in its file (`Pulumi.dev.yaml:12`), as schema errors
    have; unchanged when the file or key cannot be found."""
    text = source.read(error.where) if error.key else None
    line = yamlio.line_of_key(yamlio.loads(text, error.where), error.key) if text else None
    if line is None:
        return error
    return UserError(f"{error.where}:{line}", error.problem, error.fix, key=error.key)


def cross_check(state: State) -> list[UserError]:
    """Rules that span files: stacks name existing, active versions; production passes gates;
    records trust only what the allow-list allows."""
    errors: list[UserError] = []
    for model in state.models.values():
        errors += _check_trusted(model, state.trusted)
    for stack in state.stacks.values():
        errors += _check_stack(state, stack)
    return errors


def _check_trusted(model: ModelFile, trusted: AllowList) -> list[UserError]:
    """Every record that can still serve trusts only allowed types (revoked records never load)."""
    return [
        error
        for version, record in model.versions.items()
        if record.status != "revoked"
        for error in refusals(
            record.artifact.trusted_types,
            trusted,
            model_file(model.name),
            f"versions.{version}.artifact.trusted_types",
            f"if the record is merged, revoke it (modelctl revoke {model.name} {version}), if it is new in "
            "this change, delete it; then register a model without that type",
        )
    ]


def _check_stack(state: State, stack: Stack) -> list[UserError]:
    errors: list[UserError] = []
    env = stack.config.environment
    base = f"config.{CONFIG_NAMESPACE}:"
    if env.requires and env.requires.stack not in state.stacks:
        errors.append(
            UserError(
                stack.file,
                f"requires stack {env.requires.stack!r}, which does not exist",
                f"create {stack_file(env.requires.stack)} or fix the name",
                key=f"{base}environment.requires.stack",
            )
        )
    if env.requires and env.requires.stack == stack.name:
        errors.append(
            UserError(
                stack.file,
                "a stack cannot require itself",
                "name the stack versions must serve on first",
                key=f"{base}environment.requires.stack",
            )
        )
    for secret in env.secret_keys():
        if secret in stack.plaintext_keys:
            errors.append(
                UserError(
                    stack.file,
                    f"secret {CONFIG_NAMESPACE}:{secret} is stored in plain text",
                    f"run 'pulumi config set --secret {CONFIG_NAMESPACE}:{secret}'",
                    key=f"config.{CONFIG_NAMESPACE}:{secret}",
                )
            )
    for model_name, release in stack.config.releases.items():
        key = f"{base}releases.{model_name}"
        if model_name not in state.models:
            errors.append(
                UserError(
                    stack.file,
                    f"model {model_name!r} is not registered",
                    f"create {model_file(model_name)} or fix the name",
                    key=key,
                )
            )
            continue
        model = state.models[model_name]
        errors += _check_release(stack, model, release, key)
    return errors


def _undeployed_overrides(stack: Stack, model: ModelFile, release: Release, key: str) -> list[UserError]:
    """A header override must route to a deployed version: Istio answers 503 for a route to a subset
    with no pods. Overrides do not deploy their version themselves: every Deployment of a stack is
    a line of `traffic` (0 keeps it warm) or the shadow, so a mistyped override starts no pods."""
    deployed = release.deployed()
    return [
        UserError(
            stack.file,
            f"header override {header!r} routes to {version} of {model.name}, which is not deployed on {stack.name} "
            "(no Deployment, no DestinationRule subset: every such request would get a 503)",
            f"deploy it at 0% with 'traffic: {{{version}: 0}}' or route the override to one of: {', '.join(deployed)}",
            key=f"{key}.overrides.{header}",
        )
        for header, version in release.overrides.items()
        if version in model.versions and version not in deployed
    ]


def _check_release(stack: Stack, model: ModelFile, release: Release, key: str) -> list[UserError]:
    errors = []
    for path, version in release.referenced():
        record = model.versions.get(version)
        if record is None:
            errors.append(
                unknown_version(stack.file, model.name, version, model.ordered_versions(), f"{key}.{path}")
            )
        elif record.status == "revoked":
            # Deprecated versions may keep what they serve (and stay rollback targets); only
            # gaining traffic is refused, by the release commands and `check --base`.
            fix = "name an active version there instead (edit the stack file), or revert the commit that revoked it"
            errors.append(revoked_version(stack.file, model.name, version, fix, f"{key}.{path}"))
    errors += _undeployed_overrides(stack, model, release, key)
    if stack.config.environment.production:
        for version in release.serving():
            record = model.versions.get(version)
            failed = record.failed_gates(model.gates) if record else []
            if failed:
                errors.append(
                    UserError(
                        stack.file,
                        f"version {version} of {model.name} fails the promotion gates ({'; '.join(failed)}) on a production stack",
                        "serve a version that passes the gates in models/<model>/model.yaml",
                        key=f"{key}.traffic.{version}",
                    )
                )
    return errors
