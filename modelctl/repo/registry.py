"""The git-native model registry: version records in models/<model>/model.yaml, made from dvc.lock.

A record is written once, by `register`, from a committed pipeline run; afterwards only its
status changes. Each change is one commit touching only the model file.

The pipeline's conventions this relies on (dvc.yaml): stages `<stage>@<model>`, where
`train@<model>` writes exactly the artifact, `profile@<model>` the reference profile,
`prepare@<model>` the data, and `evaluate@<model>` the metrics in `metrics/<model>.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml.comments import CommentedMap

from modelctl.core import buildenv, formats, releases, yamlio
from modelctl.core.errors import UserError, collect, revoked_version, unknown_version
from modelctl.core.schema import ModelFile, Status, Version, VersionRecord
from modelctl.core.state import State, load_allow_list, load_model, model_file, model_names, parse_model
from modelctl.core.trusted import reviewed
from modelctl.repo import dvcstore, gitutil
from modelctl.repo.dvcstore import Location, LockedStage
from modelctl.repo.state import Revision, read_state
from modelctl.repo.transaction import commit_file, repository_lock

STAGES = ("prepare", "train", "evaluate", "profile")
PIPELINE_FILES = ("dvc.yaml", "dvc.lock", "params.yaml", "pipeline")
Bump = Literal["major", "minor", "patch"]
Say = Callable[[str], None]


def quiet(_: str) -> None:
    """The default progress callback: say nothing."""


def stage_names(model: str) -> list[str]:
    return [f"{stage}@{model}" for stage in STAGES]


def recorded_stages(model: str) -> list[str]:
    """The stages that write the objects a record names (the artifact and the profile); dvc
    repro runs what they depend on too, but not `evaluate`."""
    return [f"train@{model}", f"profile@{model}"]


def metrics_path(model: str) -> str:
    return f"metrics/{model}.json"


# ---------------------------------------------------------------- register


@dataclass(frozen=True)
class PipelineRun:
    """What dvc.lock says one model's stages produced."""

    artifact: tuple[str, str, int]  # path, md5, size
    profile: tuple[str, str, int]
    data_md5: str
    params: dict[str, Any]
    deps: list[str]


def _only_output(stage: LockedStage) -> tuple[str, str, int]:
    if len(stage.outs) != 1:
        raise UserError(
            dvcstore.LOCK_FILE,
            f"stage {stage.name} has {len(stage.outs)} outputs, expected exactly one",
            "give the stage a single output in dvc.yaml",
            key=f"stages.{stage.name}.outs",
        )
    ((path, (md5, size)),) = stage.outs.items()
    return path, md5, size


def pipeline_run(root: Path, model: str) -> PipelineRun:
    stages = {name.split("@")[0]: dvcstore.locked_stage(root, name) for name in stage_names(model)}
    params: dict[str, Any] = {}
    for stage in stages.values():
        for key, value in stage.params.items():
            params[key.removeprefix(f"models.{model}.")] = json.loads(json.dumps(value))
    outputs = {path for stage in stages.values() for path in stage.outs}
    return PipelineRun(
        artifact=_only_output(stages["train"]),
        profile=_only_output(stages["profile"]),
        data_md5=_only_output(stages["prepare"])[1],
        params=params,
        deps=sorted({dep for stage in stages.values() for dep in stage.deps} - outputs),
    )


def next_version(model: ModelFile, version: str | None, bump: Bump | None) -> str:
    latest = model.latest()
    if version is None:
        return Version(latest).bump(bump or "minor").name if latest else "v1.0.0"
    try:
        wanted = Version(version)
    except ValueError:
        raise UserError(
            model_file(model.name), f"{version!r} is not a version like v1.2.3", "pass --version vX.Y.Z"
        ) from None
    if latest and not Version(latest) < wanted:
        raise UserError(
            model_file(model.name),
            f"version {version} is not greater than the latest, {latest}",
            "pass a greater --version or use --bump",
            key="versions",
        )
    return version


def _require_committed(root: Path, paths: list[str]) -> None:
    dirty = gitutil.dirty_paths(root, *paths)
    if dirty:
        raise UserError(
            dirty[0],
            f"uncommitted changes in {', '.join(sorted(dirty)[:5])}",
            "commit them first, so the record's source_commit reproduces this run",
        )


def _require_up_to_date(root: Path, model: str) -> None:
    changed = dvcstore.changed_stages(root, stage_names(model))
    if changed:
        raise UserError(
            dvcstore.LOCK_FILE,
            f"{', '.join(changed)} changed since dvc.lock ('dvc status' is not clean)",
            f"run 'dvc repro {' '.join(stage_names(model))}' and commit dvc.lock",
        )


def _require_new_artifact(model: ModelFile, md5: str) -> None:
    for name, record in model.versions.items():
        if record.artifact.md5 == md5:
            raise UserError(
                model_file(model.name),
                f"artifact md5 {md5} is already registered as {name}",
                "change params or code and 'dvc repro' to train a new version",
                key=f"versions.{name}.artifact.md5",
            )


def _cached_digest(cache: Path, md5: str, path: str) -> dvcstore.Digest:
    """The sha256 of a cached output, after checking the cache copy is what dvc.lock names."""
    obj = cache / dvcstore.object_path(md5)
    if not obj.is_file():
        raise UserError(path, f"md5 {md5} is not in the DVC cache {cache}", "run 'dvc repro' or 'dvc pull'")
    digest = dvcstore.digest_file(obj)
    if digest.md5 != md5:
        raise UserError(str(obj), f"cached copy has md5 {digest.md5}, not {md5}", "run 'dvc repro --force'")
    return digest


def _trusted_types(root: Path, path: Path, shown: str) -> list[str]:
    """The types the artifact at `path` (named `shown`) asks its format to build, each allowed
    by the repository's reviewed allow-list; none for a format that holds no code.

    Raises
    ------
    UserError, UserErrors
        One line per type the allow-list refuses, naming it.
    """
    fmt = formats.by_suffix(shown)
    if fmt.stored_types is None:
        return []
    return reviewed(fmt.stored_types(path.read_bytes()), load_allow_list(root), shown)


def _require_servable(model: ModelFile, path: Path, trusted: list[str], shown: str) -> None:
    """The artifact is what its suffix says (its format's library reads it) and fits the model
    file's signature and output; UserError, one line, otherwise."""
    loaded = formats.by_suffix(shown).read(path.read_bytes(), trusted, shown)
    problem = formats.check(loaded, model.signature.names, model.output.classes)
    if problem is not None:
        raise UserError(shown, problem.problem, problem.fix)


def _metrics(root: Path, model: str) -> dict[str, float]:
    path = root / metrics_path(model)
    if not path.is_file():
        raise UserError(metrics_path(model), "file not found", f"run 'dvc repro evaluate@{model}'")
    values = json.loads(path.read_text(encoding="utf-8"))
    return {name: float(value) for name, value in values.items() if isinstance(value, int | float)}


def build_record(root: Path, model: ModelFile, run: PipelineRun, cache: Path, commit: str) -> dict[str, Any]:
    """The version record of `run`, after checking that its artifact serves `model`."""
    artifact_path, artifact_md5, size = run.artifact
    profile_path, profile_md5, _ = run.profile
    artifact = _cached_digest(cache, artifact_md5, artifact_path)
    profile = _cached_digest(cache, profile_md5, profile_path)
    fmt = formats.by_suffix(artifact_path)
    cached = cache / dvcstore.object_path(artifact_md5)
    trusted = _trusted_types(root, cached, artifact_path)
    _require_servable(model, cached, trusted, artifact_path)
    return {
        "artifact": {
            "path": artifact_path,
            "md5": artifact_md5,
            "sha256": artifact.sha256,
            "size": size,
            "format": fmt.name,
            "trusted_types": trusted,
        },
        "profile": {"path": profile_path, "md5": profile_md5, "sha256": profile.sha256},
        "metrics": _metrics(root, model.name),
        "params": run.params,
        "source_commit": commit,
        "data_md5": run.data_md5,
        # The stages ran under this interpreter's packages and the pins of the committed code.
        "build": buildenv.current(),
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "status": "active",
    }


@dataclass(frozen=True)
class Registered:
    model: str
    version: str
    record: VersionRecord
    commit: str | None
    trust: str  # why the record's trusted_types are what they are (the format table's words)


def register(
    root: Path,
    model: str,
    *,
    version: str | None = None,
    bump: Bump | None = None,
    commit: bool = True,
    say: Say = quiet,
    lock_timeout: float | None = None,
) -> Registered:
    """Record the committed, up-to-date pipeline run of `model` as a new version.

    The repository lock is held from reading the model file to the commit.
    """
    with repository_lock(root, lock_timeout):
        return _register(root, model, version, bump, commit=commit, say=say)


def _register(
    root: Path, model: str, version: str | None, bump: Bump | None, *, commit: bool, say: Say
) -> Registered:
    current = load_model(root, model)
    name = next_version(current, version, bump)
    run = pipeline_run(root, model)
    _require_committed(root, [*PIPELINE_FILES, *run.deps])
    say(f"checking that {', '.join(stage_names(model))} match dvc.lock")
    _require_up_to_date(root, model)
    _require_new_artifact(current, run.artifact[1])
    say("hashing the artifact and profile, reading the artifact with its format's library")
    record = build_record(root, current, run, dvcstore.repo_config(root).cache, gitutil.head(root))
    fmt = formats.FORMATS[record["artifact"]["format"]]
    trust = fmt.trust if fmt.holds_code else f"no trusted types recorded: {fmt.trust}"
    say(f"{fmt.name} artifact: {trust}")
    doc = yamlio.load(root / model_file(model), model_file(model))
    if not doc.get("versions"):
        doc["versions"] = CommentedMap()  # block style, also where the file says `versions: {}`
    doc["versions"][name] = record
    text = yamlio.dumps(doc)
    message = (
        f"register {model} {name}\n\nartifact md5 {run.artifact[1]}, trained at {record['source_commit']}"
    )
    made = _save(root, model, text, message, commit)
    return Registered(model, name, parse_model(text, model_file(model)).versions[name], made, trust)


def _save(root: Path, model: str, text: str, message: str, commit: bool) -> str | None:
    """Write the validated model file and commit it alone; on failure, leave everything as it was."""
    display = model_file(model)
    parse_model(text, display)
    if commit and gitutil.dirty_paths(root, display):
        raise UserError(
            display, "has uncommitted changes", "commit or discard them first, or pass --no-commit"
        )
    return commit_file(root, display, text, message, commit=commit)


# ---------------------------------------------------------------- status


def _referencing(state: State, model: str, version: str) -> list[tuple[str, str]]:
    """(stack, key path) for every place a stack names this version."""
    return [
        (stack.name, path)
        for stack in state.stacks.values()
        for path, named in (
            stack.config.releases[model].referenced() if model in stack.config.releases else []
        )
        if named == version
    ]


def _move_off(state: State, model: ModelFile, stack: str, version: str) -> str:
    """The rollback that frees `version` on `stack`: to the release's stable version when that is
    another one, else to the active version (not held there) serving most, or the newest."""
    command = f"modelctl rollback {model.name} --stack {stack}"
    release = state.stack(stack).config.releases[model.name]
    if releases.baseline(release) != version:
        return command
    candidates = [
        v
        for v in model.ordered_versions()
        if v != version and model.versions[v].status == "active" and v not in release.held
    ]
    if not candidates:
        return f"register or un-hold another version of {model.name}, then {command} --to VERSION"
    return f"{command} --to {max(candidates, key=lambda v: (release.traffic.get(v, -1), Version(v)))}"


def set_status(
    root: Path,
    model: str,
    version: str,
    status: Status,
    *,
    commit: bool = True,
    lock_timeout: float | None = None,
) -> str | None:
    """Deprecate a version (it keeps what it serves, gains nothing more) or revoke one no stack
    names any more; revoked is final. The repository lock is held from reading to the commit."""
    with repository_lock(root, lock_timeout):
        return _set_status(root, model, version, status, commit)


def _set_status(root: Path, model: str, version: str, status: Status, commit: bool) -> str | None:
    state = read_state(root)
    current = state.model(model)
    record = _record(current, version)
    key = f"versions.{version}.status"
    if record.status == "revoked":
        raise revoked_version(
            model_file(model), model, version, "revoked is final: register a new version", key
        )
    if record.status == status:
        raise UserError(model_file(model), f"{version} is already {status}", "nothing to do", key=key)
    if status == "revoked":
        collect(
            [
                UserError(
                    f"{state.stack(stack).file}",
                    f"{model} {version} is still referenced at {path}",
                    f"move its traffic first: {_move_off(state, current, stack, version)}",
                )
                for stack, path in _referencing(state, model, version)
            ]
        )
    doc = yamlio.load(root / model_file(model), model_file(model))
    doc["versions"][version]["status"] = status
    verb = "deprecate" if status == "deprecated" else "revoke"
    return _save(root, model, yamlio.dumps(doc), f"{verb} {model} {version}", commit)


def _record(model: ModelFile, version: str) -> VersionRecord:
    if version not in model.versions:
        raise unknown_version(
            model_file(model.name), model.name, version, model.ordered_versions(), "versions"
        )
    return model.versions[version]


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Serving:
    stack: str
    role: str  # "traffic", "shadow" or "override"
    weight: float  # percent of live traffic, or of mirrored traffic for a shadow


def serving(state: State, model: str) -> dict[str, list[Serving]]:
    """Which stacks serve each version of `model`, and how."""
    found: dict[str, list[Serving]] = {}
    for stack in sorted(state.stacks.values(), key=lambda s: s.name):
        release = stack.config.releases.get(model)
        if release is None:
            continue
        for version, weight in release.traffic.items():
            found.setdefault(version, []).append(Serving(stack.name, "traffic", weight))
        if release.shadow:
            found.setdefault(release.shadow.version, []).append(
                Serving(stack.name, "shadow", release.shadow.percent)
            )
        for version in sorted(set(release.overrides.values())):
            found.setdefault(version, []).append(Serving(stack.name, "override", 0))
    return found


@dataclass(frozen=True)
class Change:
    commit: str
    author: str
    date: str
    subject: str
    change: str


_FIELD, _RECORD = "\x1f", "\x1e"


def history(root: Path, model: str) -> dict[str, list[Change]]:
    """For each version, in version order, the commits that added or changed its record."""
    display = model_file(model)
    log = gitutil.git(
        root, "log", "--reverse", f"--format=%H{_FIELD}%an <%ae>{_FIELD}%cI{_FIELD}%s{_RECORD}", "--", display
    )
    changes: dict[str, list[Change]] = {}
    before: dict[str, Any] = {}
    for entry in filter(str.strip, log.split(_RECORD)):
        sha, author, date, subject = entry.strip("\n").split(_FIELD)
        after = _versions_at(root, sha, display)
        for version in sorted(set(before) | set(after), key=Version):
            change = _describe(before.get(version), after.get(version))
            if change:
                changes.setdefault(version, []).append(Change(sha, author, date, subject, change))
        before = after
    return {version: changes[version] for version in sorted(changes, key=Version)}


def _versions_at(root: Path, commit: str, display: str) -> dict[str, Any]:
    text = Revision(root, commit).read(display)
    try:
        doc = yamlio.loads(text, display) if text else None
    except UserError:
        return {}
    versions = doc.get("versions") if isinstance(doc, dict) else None
    return json.loads(json.dumps(versions, default=str)) if isinstance(versions, dict) else {}


def _describe(old: Any, new: Any) -> str:
    if old == new:
        return ""
    if old is None:
        return "registered"
    if new is None:
        return "removed"
    status = (old.get("status", "active"), new.get("status", "active"))
    others_same = {k: v for k, v in old.items() if k != "status"} == {
        k: v for k, v in new.items() if k != "status"
    }
    if others_same:
        return f"status {status[0]} -> {status[1]}"
    return "record changed"


# ---------------------------------------------------------------- objects in stores


@dataclass(frozen=True)
class StoredObject:
    kind: Literal["artifact", "profile"]
    path: str
    md5: str
    sha256: str
    size: int | None


def stored_objects(record: VersionRecord) -> list[StoredObject]:
    a, p = record.artifact, record.profile
    return [
        StoredObject("artifact", a.path, a.md5, a.sha256, a.size),
        StoredObject("profile", p.path, p.md5, p.sha256, None),
    ]


def remote_location(root: Path, remote: str | None) -> Location:
    url = remote or dvcstore.repo_config(root).remote
    if not url:
        raise UserError(
            ".dvc/config", "no default DVC remote", "run 'dvc remote add -d <name> <url>' or pass --remote"
        )
    return Location.of(url)


@dataclass(frozen=True)
class Fetched:
    kind: str
    out: str
    source: str


def fetch_version(
    root: Path, model: str, version: str, *, out: Path | None, profile_out: Path | None, remote: str | None
) -> list[Fetched]:
    """Write a registered version's artifact and/or profile from the remote or the cache, verified."""
    record = _record(load_model(root, model), version)
    config = dvcstore.repo_config(root)
    urls = [remote] if remote else [url for url in (config.remote, str(config.cache)) if url]
    sources = [Location.of(url) for url in urls]
    artifact, profile = stored_objects(record)
    targets = [(obj, path) for obj, path in ((artifact, out), (profile, profile_out)) if path is not None]
    fetched = []
    for obj, path in targets:
        used = dvcstore.fetch(sources, obj.md5, obj.sha256, path, obj.size)
        fetched.append(Fetched(obj.kind, str(path), used.url))
    return fetched


@dataclass(frozen=True)
class Finding:
    model: str
    version: str
    kind: str
    state: dvcstore.ObjectState
    detail: str
    stacks: list[str] = field(default_factory=list)

    @property
    def fix(self) -> str:
        if self.state == "ok":
            return ""
        return f"modelctl reproduce {self.model} {self.version}"


def served_versions(state: State) -> dict[tuple[str, str], list[str]]:
    """(model, version) -> stacks, for every version any stack names (traffic, shadow, overrides)."""
    found: dict[tuple[str, str], list[str]] = {}
    for stack in sorted(state.stacks.values(), key=lambda s: s.name):
        for model, release in stack.config.releases.items():
            for _, version in release.referenced():
                stacks = found.setdefault((model, version), [])
                if stack.name not in stacks:
                    stacks.append(stack.name)
    return dict(sorted(found.items(), key=lambda item: (item[0][0], Version(item[0][1]))))


def doctor(root: Path, remote: str | None = None, say: Say = quiet) -> tuple[str, list[Finding]]:
    """Check every served version's artifact and profile in the remote: present, same size and hashes."""
    state = read_state(root)
    location = remote_location(root, remote)
    findings = []
    for (model, version), stacks in served_versions(state).items():
        say(f"checking {model} {version}")
        for obj in stored_objects(state.model(model).versions[version]):
            check = dvcstore.check_object(location, obj.md5, obj.sha256, obj.size)
            findings.append(Finding(model, version, obj.kind, check.state, check.detail, stacks))
    return location.url, findings


# ---------------------------------------------------------------- reproduce


def active_versions(root: Path) -> list[tuple[str, str]]:
    """(model, version) for every active version, in model and version order."""
    pairs = []
    for name in model_names(root):
        model = load_model(root, name)
        pairs += [(name, v) for v in model.ordered_versions() if model.versions[v].status == "active"]
    return pairs


@dataclass(frozen=True)
class Reproduced:
    model: str
    version: str
    remote: str
    rebuilt: bool
    pushed: list[str]


# Records registered before the build environment was recorded were built on x86-64 with
# today's pins (churn v1.0.0 with OpenBLAS's Haswell core).
LEGACY_BUILD: dict[str, Any] = {"machine": buildenv.X86_64, "kernels": buildenv.pins(buildenv.X86_64)}


def recorded_build(record: VersionRecord) -> dict[str, Any]:
    """The record's build environment, or what records made before it was recorded assume."""
    return record.build.model_dump() if record.build else LEGACY_BUILD


def reproduce(
    root: Path, model: str, version: str, *, remote: str | None = None, force: bool = False, say: Say = quiet
) -> Reproduced:
    """Rebuild a version from its source commit under its recorded kernel settings, check it
    matches the record, push it to the remote.

    Raises UserError when this CPU cannot run the recorded kernels, when dvc repro fails, or
    when the rebuilt md5 differs from the record (naming the recorded settings that differ here).
    """
    record = _record(load_model(root, model), version)
    location = remote_location(root, remote)
    objects = stored_objects(record)
    missing = [o for o in objects if dvcstore.check_object(location, o.md5, o.sha256, o.size).state != "ok"]
    if not missing and not force:
        return Reproduced(model, version, location.url, rebuilt=False, pushed=[])
    build = recorded_build(record)
    settings = build["kernels"]
    lacking = buildenv.missing_cpu_features(settings)
    if lacking:
        raise UserError(
            model_file(model),
            f"this CPU lacks {', '.join(lacking)}, which the recorded kernels of {version} "
            f"({_settings_text(settings)}) execute",
            "reproduce it on an x86-64-v3 CPU (Intel Haswell or AMD Zen and later)",
            key=f"versions.{version}.build",
        )
    unmatched = buildenv.differences(build, buildenv.current(settings))
    if unmatched:
        say(
            f"{model} {version}: this machine cannot match the recorded build ({'; '.join(unmatched)}); "
            "the rebuilt bytes may differ"
        )
    commit = _source_commit(root, model, version, record)
    cache = dvcstore.repo_config(root).cache
    with _worktree(root, commit, say) as tree:
        dvcstore.run_dvc(tree, "cache", "dir", "--local", str(cache))
        say(
            f"{model} {version}: dvc repro {' '.join(recorded_stages(model))} at {commit[:12]} "
            f"with {_settings_text(settings)}"
        )
        env = buildenv.pinned_environ(os.environ, settings)
        dvcstore.run_dvc(tree, "repro", "--force", *recorded_stages(model), env=env)
        for obj in objects:
            _require_reproduced(tree, model, version, obj, record, unmatched=unmatched)
        for obj in missing or objects:
            say(f"{model} {version}: pushing the {obj.kind} to {location.url}")
            dvcstore.push(tree / obj.path, location, obj.md5, obj.sha256)
    return Reproduced(model, version, location.url, rebuilt=True, pushed=[o.kind for o in missing or objects])


def _source_commit(root: Path, model: str, version: str, record: VersionRecord) -> str:
    try:
        return gitutil.resolve(root, record.source_commit)
    except UserError:
        raise UserError(
            model_file(model),
            f"source commit {record.source_commit[:12]} of {version} is not in this repository",
            "fetch the whole history (git fetch --unshallow, or fetch-depth: 0 in CI) and retry",
            key=f"versions.{version}.source_commit",
        ) from None


def _settings_text(settings: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


def _require_reproduced(
    tree: Path, model: str, version: str, obj: StoredObject, record: VersionRecord, *, unmatched: list[str]
) -> None:
    built = dvcstore.digest_file(tree / obj.path)
    if built.md5 == obj.md5 and built.sha256 == obj.sha256:
        return
    if unmatched:
        why = f"the build here differs from the recorded one: {'; '.join(unmatched)}"
        fix = "rebuild where those match (the record's build), or register a new version from this machine"
    elif record.build is None:
        why = "the record predates recorded build environments, so only its kernels could be matched"
        fix = "rebuild on the machine and packages it was registered with"
    else:
        why = "python, packages, machine and kernel settings all match the record"
        fix = "so the stage code at that commit or the record itself is at fault; register a new version"
    raise UserError(
        model_file(model),
        f"rebuilt {obj.kind} of {version} has md5 {built.md5}, the record says {obj.md5}; {why}",
        fix,
        key=f"versions.{version}.{obj.kind}.md5",
    )


@contextmanager
def _worktree(root: Path, commit: str, say: Say) -> Iterator[Path]:
    """A detached checkout of `commit`, removed afterwards whatever happens."""
    parent = Path(tempfile.mkdtemp(prefix="modelctl-reproduce-"))
    tree = parent / "tree"
    say(f"checking out {commit[:12]} in {tree}")
    gitutil.git(root, "worktree", "add", "--quiet", "--detach", str(tree), commit)
    try:
        yield tree
    finally:
        gitutil.git(root, "worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(parent, ignore_errors=True)
        gitutil.git(root, "worktree", "prune", check=False)
