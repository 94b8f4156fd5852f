"""Registry commands: register, models list/show/history, deprecate, revoke, fetch, reproduce, doctor."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeAlias

from modelctl import api
from modelctl.cli import (
    EXIT_ERROR,
    EXIT_FINDING,
    EXIT_OK,
    MODEL_HELP,
    VERSION_HELP,
    Result,
    add_command,
    add_lock_timeout,
    progress,
    repo_root,
)
from modelctl.core.errors import UserError
from modelctl.core.schema import ModelFile
from modelctl.core.state import State, load_model
from modelctl.repo import dvcstore, registry
from modelctl.repo.state import read_state

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
KEY_METRICS = ("accuracy", "precision", "recall", "f1", "auc_roc")


def register(sub: SubParsers) -> None:
    parser = add_command(
        sub, "register", run_register, "record the committed pipeline run of a model as a new version"
    )
    parser.add_argument("model", help=MODEL_HELP)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", help="the new version's name, greater than the latest")
    which.add_argument(
        "--bump", choices=["patch", "minor", "major"], help="bump the latest version (default: minor)"
    )
    parser.add_argument(
        "--no-commit", action="store_true", help="write models/<model>/model.yaml without committing"
    )
    add_lock_timeout(parser)

    models = sub.add_parser("models", help="list registered models, show one, or its history")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_command(actions, "list", run_list, "every model with its latest version")
    add_command(
        actions, "show", run_show, "a model's gates and versions, and where each serves"
    ).add_argument("model", help=MODEL_HELP)
    add_command(
        actions, "history", run_history, "the commits that added or changed each version"
    ).add_argument("model", help=MODEL_HELP)

    for verb, status, what in (
        ("deprecate", "deprecated", "it keeps the traffic it has on every stack but gains none"),
        ("revoke", "revoked", "final; refused while any stack still names the version"),
    ):
        parser = add_command(sub, verb, run_set_status, f"mark a version {status}: {what}")
        parser.add_argument("model", help=MODEL_HELP)
        parser.add_argument("version", help=VERSION_HELP)
        parser.add_argument("--no-commit", action="store_true", help="edit the model file without committing")
        add_lock_timeout(parser)
        parser.set_defaults(status=status)

    parser = add_command(sub, "fetch", run_fetch, "write an artifact from the DVC remote or cache, verified")
    parser.add_argument("model", nargs="?", help="with VERSION: read the hashes from the registry")
    parser.add_argument("version", nargs="?", help=f"with MODEL: {VERSION_HELP}")
    parser.add_argument("-o", "--out", required=True, type=Path, help="where to write the artifact")
    parser.add_argument("--profile-out", type=Path, help="also write the version's reference profile here")
    parser.add_argument(
        "--remote", help="a local path or fsspec URL (default: the repository's DVC remote, then cache)"
    )
    parser.add_argument("--md5", help="without a repository: the object's md5 (needs --sha256 and --remote)")
    parser.add_argument("--sha256", help="the sha256 the object must have")

    parser = add_command(
        sub, "reproduce", run_reproduce, "rebuild a version at its source commit, verify and push it"
    )
    parser.add_argument("model", nargs="?", help=f"{MODEL_HELP} (or --all)")
    parser.add_argument("version", nargs="?", help=VERSION_HELP)
    parser.add_argument(
        "--all",
        action="store_true",
        help="every active version of every model (make demo); goes on after a failure, exits 1 if any failed",
    )
    parser.add_argument("--remote", help="push here instead of the repository's default DVC remote")
    parser.add_argument("--force", action="store_true", help="rebuild even when the remote already holds it")

    parser = add_command(sub, "doctor", run_doctor, "check every served version's objects in the DVC remote")
    parser.add_argument("--remote", help="check this remote instead of the repository's default one")


def run_register(args: argparse.Namespace) -> Result:
    done = api.register(
        repo_root(args),
        args.model,
        version=args.version,
        bump=args.bump,
        commit=not args.no_commit,
        say=progress,
        lock_timeout=args.lock_timeout,
    )
    data = {
        "model": done.model,
        "version": done.version,
        "commit": done.commit,
        "record": done.record.model_dump(mode="json"),
        "trust": done.trust,
    }
    where = f"committed {done.commit[:12]}" if done.commit else "not committed (--no-commit)"
    return Result(
        data, f"registered {done.model} {done.version} (artifact md5 {done.record.artifact.md5}); {where}"
    )


def run_set_status(args: argparse.Namespace) -> Result:
    change = (api.deprecate if args.status == "deprecated" else api.revoke)(
        repo_root(args), args.model, args.version, commit=not args.no_commit, lock_timeout=args.lock_timeout
    )
    data = {
        "model": change.model,
        "version": change.version,
        "status": change.status,
        "commit": change.commit,
    }
    where = f"committed {change.commit[:12]}" if change.commit else "not committed (--no-commit)"
    return Result(data, f"{change.model} {change.version} is now {change.status}; {where}")


def run_list(args: argparse.Namespace) -> Result:
    state = read_state(repo_root(args))
    rows: list[dict[str, Any]] = []
    for name, model in sorted(state.models.items()):
        active = [v for v in model.ordered_versions() if model.versions[v].status == "active"]
        rows.append(
            {
                "model": name,
                "owner": model.owner,
                "versions": len(model.versions),
                "active": active,
                "latest": model.latest(),
            }
        )
    table = [["MODEL", "VERSIONS", "LATEST", "ACTIVE", "OWNER"]] + [
        [r["model"], str(r["versions"]), r["latest"] or "-", ", ".join(r["active"]) or "-", r["owner"]]
        for r in rows
    ]
    return Result(rows, _table(table))


def _version_rows(state: State, model: ModelFile) -> list[dict[str, Any]]:
    served = registry.serving(state, model.name)
    rows = []
    for version in model.ordered_versions():
        record = model.versions[version]
        failed = record.failed_gates(model.gates)
        rows.append(
            {
                "version": version,
                "status": record.status,
                "format": record.artifact.format,
                "created_at": record.created_at.isoformat(),
                "metrics": record.metrics,
                "passes_gates": not failed,
                "failed_gates": failed,
                "served_by": [asdict(s) for s in served.get(version, [])],
                "artifact_md5": record.artifact.md5,
                "source_commit": record.source_commit,
                "build": record.build.model_dump() if record.build else None,
            }
        )
    return rows


def _served_text(served: list[dict[str, Any]]) -> str:
    labels = {
        "traffic": "{stack} {weight:g}%",
        "shadow": "{stack} shadow {weight:g}%",
        "override": "{stack} header",
    }
    return ", ".join(labels[s["role"]].format(**s) for s in served) or "-"


def run_show(args: argparse.Namespace) -> Result:
    state = read_state(repo_root(args))
    model = state.model(args.model)
    rows = _version_rows(state, model)
    data = {
        "model": model.name,
        "description": model.description,
        "owner": model.owner,
        "gates": model.gates,
        "versions": rows,
    }
    gates = ", ".join(f"{metric} >= {minimum:g}" for metric, minimum in model.gates.items()) or "none"
    table = [
        ["VERSION", "STATUS", "FORMAT", "CREATED", *(m.upper() for m in KEY_METRICS), "GATES", "SERVED BY"]
    ]
    for row in rows:
        metrics = [f"{row['metrics'][m]:.4f}" if m in row["metrics"] else "-" for m in KEY_METRICS]
        verdict = "pass" if row["passes_gates"] else "FAIL: " + "; ".join(row["failed_gates"])
        table.append(
            [
                row["version"],
                row["status"],
                row["format"],
                row["created_at"][:10],
                *metrics,
                verdict,
                _served_text(row["served_by"]),
            ]
        )
    header = [
        f"{model.name}: {model.description.strip()}" if model.description else model.name,
        f"owner: {model.owner}",
        f"gates (production): {gates}",
        "",
    ]
    builds = ["", "built with:", *(f"  {row['version']}  {_build_text(row['build'])}" for row in rows)]
    return Result(data, "\n".join(header) + _table(table) + ("\n".join(builds) if rows else ""))


def _build_text(build: dict[str, Any] | None) -> str:
    if build is None:
        return "not recorded (registered before build environments were); reproduce assumes " + " ".join(
            f"{k}={v}" for k, v in registry.LEGACY_BUILD["kernels"].items()
        )
    packages = ", ".join(f"{name} {version}" for name, version in build["packages"].items())
    kernels = " ".join(f"{k}={v}" for k, v in build["kernels"].items())
    return f"Python {build['python']} on {build['machine']}; {packages}; {kernels}"


def run_history(args: argparse.Namespace) -> Result:
    root = repo_root(args)
    load_model(root, args.model)
    changes = registry.history(root, args.model)
    data = {version: [asdict(c) for c in entries] for version, entries in changes.items()}
    lines = []
    for version, entries in changes.items():
        lines.append(version)
        lines += [
            f"  {c.date[:19]}  {c.commit[:12]}  {c.change:<28} {c.subject} ({c.author})" for c in entries
        ]
    return Result(data, "\n".join(lines) or f"no committed versions of {args.model}")


def run_fetch(args: argparse.Namespace) -> Result:
    if args.md5 or args.sha256:
        fetched = _fetch_by_address(args)
    elif args.model and args.version:
        fetched = registry.fetch_version(
            repo_root(args),
            args.model,
            args.version,
            out=args.out,
            profile_out=args.profile_out,
            remote=args.remote,
        )
    else:
        raise UserError(
            "fetch", "nothing to fetch", "give <model> <version>, or --md5 M --sha256 S --remote URL"
        )
    lines = [f"wrote {f.out} ({f.kind}, md5 and sha256 verified) from {f.source}" for f in fetched]
    return Result([asdict(f) for f in fetched], "\n".join(lines))


def _fetch_by_address(args: argparse.Namespace) -> list[registry.Fetched]:
    """The init container's form: no repository, only the content address and the remote."""
    if args.model or args.profile_out:
        raise UserError(
            "fetch", "--md5/--sha256 name one object directly", "drop <model> <version> and --profile-out"
        )
    if not (args.md5 and args.sha256 and args.remote):
        raise UserError("fetch", "--md5, --sha256 and --remote go together", "give all three")
    for flag, value, length in (("--md5", args.md5, 32), ("--sha256", args.sha256, 64)):
        if len(value) != length or any(c not in "0123456789abcdef" for c in value):
            raise UserError(
                "fetch", f"{flag} {value!r} is not {length} lower-case hex digits", "copy it from model.yaml"
            )
    used = dvcstore.fetch([dvcstore.Location.of(args.remote)], args.md5, args.sha256, args.out)
    return [registry.Fetched("object", str(args.out), used.url)]


def run_reproduce(args: argparse.Namespace) -> Result:
    root = repo_root(args)
    if args.all == bool(args.model and args.version):
        raise UserError(
            "reproduce", "give either <model> <version> or --all", "e.g. modelctl reproduce --all"
        )
    if not args.all:
        done = registry.reproduce(
            root, args.model, args.version, remote=args.remote, force=args.force, say=progress
        )
        return Result(asdict(done), _reproduced_text(done))
    rows, lines = [], []
    for model, version in registry.active_versions(root):
        # One version that does not rebuild must not keep the others from the remote.
        try:
            done = registry.reproduce(
                root, model, version, remote=args.remote, force=args.force, say=progress
            )
        except UserError as error:
            rows.append(
                {"model": model, "version": version, "rebuilt": False, "pushed": [], "error": str(error)}
            )
            lines.append(f"{model} {version}: failed: {error}")
            continue
        rows.append({**asdict(done), "error": None})
        lines.append(_reproduced_text(done))
    failed = sum(1 for row in rows if row["error"])
    if failed:
        lines.append(f"{failed} of {len(rows)} versions failed to reproduce")
    return Result(rows, "\n".join(lines), exit_code=EXIT_ERROR if failed else EXIT_OK)


def _reproduced_text(done: registry.Reproduced) -> str:
    if done.rebuilt:
        return f"{done.model} {done.version}: rebuilt and pushed ({', '.join(done.pushed)} to {done.remote}); md5 matches the record"
    return f"{done.model} {done.version}: already in {done.remote} with matching hashes"


def run_doctor(args: argparse.Namespace) -> Result:
    remote, findings = registry.doctor(repo_root(args), args.remote, say=progress)
    bad = [f for f in findings if f.state != "ok"]
    data = {
        "remote": remote,
        "ok": not bad,
        "objects": [{**asdict(f), "fix": f.fix} for f in findings],
    }
    table = [["MODEL", "VERSION", "OBJECT", "STATE", "STACKS", "DETAIL"]] + [
        [f.model, f.version, f.kind, f.state, ",".join(f.stacks), f.detail or "md5, sha256 and size match"]
        for f in findings
    ]
    fixes = sorted({f.fix for f in bad})
    summary = (
        f"{len(bad)} of {len(findings)} objects missing or tampered in {remote}; fix: "
        + "; ".join(fixes)
        + " (or 'dvc push' from a machine that has them)"
        if bad
        else f"all {len(findings)} objects of served versions are in {remote} with matching hashes"
    )
    return Result(data, _table(table) + "\n" + summary, exit_code=EXIT_FINDING if bad else EXIT_OK)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
