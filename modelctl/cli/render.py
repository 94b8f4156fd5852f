"""`modelctl render --stack S [--out DIR]`: write the stack's Kubernetes objects as reviewable YAML."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelctl.cli import Result, add_command, repo_root
from modelctl.core import yamlio
from modelctl.core.state import State
from modelctl.repo.state import read_state

DEFAULT_OUT = "rendered"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub, "render", run, "write a stack's Kubernetes objects as YAML, one file per object"
    )
    parser.add_argument("--stack", required=True, help="the stack to render (Pulumi.<stack>.yaml)")
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default: {DEFAULT_OUT}/<stack>/)")


def run(args: argparse.Namespace) -> Result:
    # The shells are imported when used: the serving image runs `modelctl fetch` without them.
    from infra.render import render_files

    root = repo_root(args)
    state = read_state(root)
    files = render_files(state, args.stack)
    out = Path(args.out) if args.out else root / DEFAULT_OUT / args.stack
    removed = write_tree(out, files)
    summary = stack_summary(state, args.stack)
    data = {
        "stack": args.stack,
        "out": str(out),
        "files": list(files),
        "removed": removed,
        "summary": summary,
    }
    return Result(data, summary_text(args.stack, out, len(files), summary))


def write_tree(out: Path, files: dict[str, str]) -> list[str]:
    """Write every file atomically and delete files an earlier render wrote that are gone now, so the
    folder always equals the desired state. Files without the render header are left alone; a
    file that already holds its text is not written again (nor synced to disk)."""
    for name, text in files.items():
        if not _holds(out / name, text):
            yamlio.write_atomic(out / name, text)
    stale = [
        path
        for pattern in ("*.yaml", "*.yml")
        for path in out.rglob(pattern)
        if path.relative_to(out).as_posix() not in files and _rendered_by_us(path)
    ]
    for path in stale:
        path.unlink()
    return sorted(path.relative_to(out).as_posix() for path in stale)


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_bytes() == text.encode()
    except OSError:
        return False


def _rendered_by_us(path: Path) -> bool:
    from infra.render import HEADER

    with path.open(encoding="utf-8", errors="replace") as handle:
        return handle.readline() == HEADER


def stack_summary(state: State, stack_name: str) -> dict[str, Any]:
    stack = state.stack(stack_name)
    env = stack.config.environment
    models = {}
    for name, release in sorted(stack.config.releases.items()):
        models[name] = {
            "weights": {version: release.traffic[version] for version in release.serving()},
            "warm": [v for v in release.deployed() if release.traffic.get(v) == 0],
            "shadow": release.shadow.model_dump() if release.shadow else None,
            "sticky": release.sticky is not None,
            "overrides": dict(release.overrides),
        }
    return {
        "namespace": env.namespace,
        "production": env.production,
        "image": env.image,
        "receivers": [r.name for r in env.receivers],
        "models": models,
    }


def summary_text(stack_name: str, out: Path, count: int, summary: dict[str, Any]) -> str:
    kind = "production" if summary["production"] else "non-production"
    lines = [f"stack {stack_name} ({kind}, namespace {summary['namespace']}): {count} files in {out}"]
    for name, model in summary["models"].items():
        weights = ", ".join(f"{v} {w}%" for v, w in model["weights"].items())
        extras = [f"warm {', '.join(model['warm'])}"] if model["warm"] else []
        if model["shadow"]:
            extras.append(f"shadow {model['shadow']['version']} {model['shadow']['percent']:g}%")
        if model["sticky"]:
            extras.append("sticky")
        if model["overrides"]:
            extras.append(f"{len(model['overrides'])} header overrides")
        lines.append(f"  {name}: {weights}" + (f" ({'; '.join(extras)})" if extras else ""))
    receivers = ", ".join(summary["receivers"]) or "none"
    lines.append(f"  alert receivers: {receivers}")
    return "\n".join(lines)
