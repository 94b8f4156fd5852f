"""Dependencies point one way: modelctl.core imports nothing else here (and the rest of the core not
its analyses); modelctl.repo only the core; the shells (pipeline, infra, serving, policies) only
the core, never each other; the CLI and the API are the outer layer. No import circle, and no
source file over 1,000 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest
import yaml

from tests.factories import default_docs, write_repo

ROOT = Path(__file__).resolve().parents[1]
SHELLS = ("pipeline", "infra", "serving", "policies", "onebox")
# The outer layer: the CLI and the API under it may load the shells (lazily: see the last test).
OUTER = ("modelctl.cli", "modelctl.api")
# Folder (or file) -> the modules it must not import.
# The first folder a path starts with decides.
RULES: dict[str, tuple[str, ...]] = {
    "modelctl/core/analysis/": ("modelctl.repo", *OUTER, *SHELLS),
    "modelctl/core/": ("modelctl.core.analysis", "modelctl.repo", *OUTER, *SHELLS),
    "modelctl/repo/": (*OUTER, *SHELLS),
    **{f"{shell}/": ("modelctl.repo", *OUTER, *(s for s in SHELLS if s != shell)) for shell in SHELLS},
}


def imported_modules(source: str) -> set[str]:
    """Every absolute module a source imports, `from a import b` counted as both a and a.b."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def violations(path: str, source: str) -> list[str]:
    """The imports of the file at `path` (relative to the root) that break a layering rule."""
    forbidden = next((rule for folder, rule in RULES.items() if path.startswith(folder)), ())
    return sorted(
        name
        for name in imported_modules(source)
        if any(name == f or name.startswith(f"{f}.") for f in forbidden)
    )


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path.read_text(encoding="utf-8"))}


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("modelctl", *SHELLS), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    """core imports nothing else here; repo only the core; the shells only the core, never each other."""
    relative = str(path.relative_to(ROOT))
    assert violations(relative, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("path", "source", "broken"),
    [
        (
            "modelctl/core/releases.py",
            "from modelctl.repo import gitutil\n",
            ["modelctl.repo", "modelctl.repo.gitutil"],
        ),
        ("modelctl/core/analysis/judge.py", "import infra.build\n", ["infra.build"]),
        ("modelctl/core/state.py", "from modelctl import cli\n", ["modelctl.cli"]),
        (
            "modelctl/core/contract.py",
            "from modelctl.core.analysis.window import Sample\n",
            ["modelctl.core.analysis.window", "modelctl.core.analysis.window.Sample"],
        ),
        (
            "modelctl/core/analysis/window.py",
            "def f():\n    from modelctl.api.analysis import read_counts\n",
            ["modelctl.api.analysis", "modelctl.api.analysis.read_counts"],
        ),
        (
            "modelctl/repo/registry.py",
            "def f():\n    from policies.rules import RULES\n",
            ["policies.rules", "policies.rules.RULES"],
        ),
        (
            "modelctl/repo/history.py",
            "from modelctl.api import canary\n",
            ["modelctl.api", "modelctl.api.canary"],
        ),
        (
            "serving/app.py",
            "from infra.common import HTTP_PORT\n",
            ["infra.common", "infra.common.HTTP_PORT"],
        ),
        (
            "policies/rules.py",
            "from modelctl.repo.state import read_state\n",
            ["modelctl.repo.state", "modelctl.repo.state.read_state"],
        ),
    ],
)
def test_a_planted_import_breaks_the_rules(path: str, source: str, broken: list[str]) -> None:
    real = (ROOT / path).read_text(encoding="utf-8")
    assert violations(path, real) == []
    assert violations(path, real + source) == broken


MAX_LINES = 1000


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Module -> the modules among `paths` it imports anywhere (at the top, in a function, for type
    checking): `from a import b` imports the module a.b when there is one, else a."""
    modules = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                found |= submodules | ({node.module} if len(submodules) < len(node.names) else set())
        graph[name] = (found & modules.keys()) - {name}
    return graph


def test_no_import_circle() -> None:
    """No module imports, however indirectly, one that imports it back, even lazily."""
    try:
        TopologicalSorter(import_graph(python_files("modelctl", *SHELLS))).prepare()
    except CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def test_a_planted_circle_is_found() -> None:
    graph = import_graph(python_files("modelctl"))
    assert "modelctl.cli.analysis" in graph["modelctl.cli.canary"]
    graph["modelctl.cli.analysis"].add("modelctl.cli.canary")
    with pytest.raises(CycleError):
        TopologicalSorter(graph).prepare()


def test_no_source_file_is_over_1000_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in python_files("modelctl", *SHELLS, "bench", "tests")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_a_release_command_loads_no_analysis_code(tmp_path: Path) -> None:
    """The API's face loads each module on first use: `modelctl fetch` (in the serving image) and
    a release command (a canary's step, run) go without the analyses' reading and statistics
    (`modelctl.api.analysis*`, the judge, and scipy with them: half a second of every release
    command; the alert rules' margin function, `core.analysis.margins`, is rendered with them)."""
    repo = write_repo(tmp_path / "repo", *default_docs())
    script = (
        "import contextlib, io, sys\n"
        "from modelctl import api\n"
        "from modelctl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['fetch', '--help'])\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = main(['-C', {str(repo)!r}, 'canary', 'fraud-detection', 'v1.1.0', '--stack', 'staging', '--dry-run'])\n"
        "assert code == 0, code\n"
        "api.canary, api.rollback, api.register, api.check_policies\n"
        "heavy = ('modelctl.api.analysis', 'modelctl.core.analysis.judge', 'modelctl.core.analysis.sequential', 'scipy')\n"
        "print(*(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def test_the_cli_may_load_the_shells() -> None:
    assert violations("modelctl/cli/check.py", "from infra.build import build_stack\n") == []


def test_the_profile_stage_depends_on_exactly_the_code_it_runs() -> None:
    """dvc.yaml's profile stage lists the Python files `python -m pipeline profile` loads (the
    launcher that pins the kernels, then the stage), and no other: editing detection, the window
    or the statistics leaves every profile up to date."""
    script = (
        "import sys, pathlib\n"
        "import pipeline.__main__, pipeline.profile\n"
        f"root = pathlib.Path({str(ROOT)!r})\n"
        "for m in list(sys.modules.values()):\n"
        "    f = getattr(m, '__file__', None)\n"
        "    if f and any(pathlib.Path(f).is_relative_to(root / p) for p in ('modelctl', 'pipeline')):\n"
        "        print(pathlib.Path(f).relative_to(root))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    loaded = {
        line
        for line in proc.stdout.splitlines()
        if not line.endswith(("modelctl/__init__.py", "pipeline/__init__.py", "modelctl/core/__init__.py"))
    }
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["profile"]["do"]
    listed = {dep for dep in stage["deps"] if dep.endswith(".py")}
    assert loaded == listed
    assert "modelctl/core/drift/detect.py" not in listed


def test_serving_imports_only_serving_dependencies() -> None:
    build_only = {"dvc", "pulumi", "pulumi_kubernetes", "pulumi_policy", "ruamel", "skl2onnx", "onnxmltools"}
    for path in python_files("serving"):
        assert not imported_packages(path) & build_only, path


def test_the_serving_image_cli_runs_without_the_other_shells() -> None:
    """The init container runs `modelctl fetch` from the serving image, which has no infra,
    policies or pipeline code: the CLI must start without them (and without the statistics'
    scipy, which only `drift` and `judge` load)."""
    script = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'infra', 'policies', 'pipeline', 'onebox', 'dvc', 'pulumi', 'scipy'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from modelctl.cli import main\n"
        "sys.exit(main(['fetch', '--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--sha256" in proc.stdout
