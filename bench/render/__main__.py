"""`python -m bench.render`: render a stack of 100 models x 3 versions, and run the Pulumi program on
it under mocks. Prints the timings against the target and writes them to bench/render/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pulumi
import yaml

from infra.build import build_stack
from infra.program import main as run_program
from infra.render import render_files
from modelctl.core.state import load_state
from policies.rules import check_objects
from tests.factories import model_doc, stack_doc, write_repo

HERE = Path(__file__).resolve().parent
TARGET_RENDER_SECONDS = 5.0
STACK = "bench"


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.count = 0

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.count += 1
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


def write_bench_repo(root: Path, models: int) -> Path:
    """`models` models, each with three versions deployed: 90/10 canary plus a warm rollback target."""
    names = [f"model-{index:03d}" for index in range(models)]
    docs = {name: model_doc(name, versions=("v1.0.0", "v1.1.0", "v1.2.0")) for name in names}
    stack = stack_doc({"v1.0.0": 0, "v1.1.0": 90, "v1.2.0": 10}, model=names[0])
    releases = stack["config"]["modelctl:releases"]
    for name in names[1:]:
        releases[name] = releases[names[0]]
    return write_repo(root, docs, {STACK: stack}, git=False)


def best_of(repeats: int, action: Callable[[], object]) -> tuple[float, float]:
    """(fastest, median) wall-clock seconds of `repeats` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def mocked_program(root: Path) -> int:
    mocks = _Mocks()
    pulumi.runtime.set_mocks(mocks, project="modelctl", stack=STACK, preview=False)
    config = {key: json.dumps(value) for key, value in _stack_config(root).items()}
    pulumi.runtime.set_all_config(config)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[list[str]]:
        return pulumi.Output.all(*(r.resource.urn for r in run_program(root)))

    program()
    return mocks.count


def _stack_config(root: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((root / f"Pulumi.{STACK}.yaml").read_text())["config"]
    return config


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = write_bench_repo(Path(folder) / "repo", args.models)
        load = best_of(args.repeats, lambda: load_state(root))
        state = load_state(root)
        objects = build_stack(state, STACK)
        build = best_of(args.repeats, lambda: build_stack(state, STACK))
        render = best_of(args.repeats, lambda: render_files(state, STACK))
        policies = best_of(args.repeats, lambda: check_objects(objects, state))
        registered = mocked_program(root)
        program = best_of(1, lambda: mocked_program(root))
    rows = [
        ("load_state (validate the repository)", load),
        ("build_stack (objects as dicts)", build),
        ("render_files (build + YAML)", render),
        ("policy rules on every object", policies),
        ("Pulumi program under mocks", program),
    ]
    report(args.models, len(objects), registered, rows)


def report(models: int, objects: int, registered: int, rows: list[tuple[str, tuple[float, float]]]) -> None:
    render_best = rows[2][1][0]
    verdict = "meets" if render_best <= TARGET_RENDER_SECONDS else "MISSES"
    lines = [
        "# bench/render",
        "",
        f"{models} models x 3 deployed versions: {objects} objects rendered, {registered} resources "
        f"registered by the Pulumi program. {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
        "| step | best s | median s |",
        "|---|---:|---:|",
        *(f"| {name} | {best:.3f} | {median:.3f} |" for name, (best, median) in rows),
        "",
        f"Render {verdict} the target of {TARGET_RENDER_SECONDS:g} s ({render_best:.2f} s).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "RESULTS.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
