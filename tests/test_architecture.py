"""Dependencies point one way: the core imports no shell; the shells never import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELLS = ("pipeline", "infra", "serving", "policies")
# The CLI is the outermost shell: it renders (infra) and checks (policies).
CORE_EXEMPT = ("modelctl/cli/",)


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("modelctl"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_shell(path: Path) -> None:
    if str(path.relative_to(ROOT)).startswith(CORE_EXEMPT):
        return
    assert not imported_packages(path) & set(SHELLS)


@pytest.mark.parametrize("shell", SHELLS)
def test_shells_do_not_import_each_other(shell: str) -> None:
    others = set(SHELLS) - {shell}
    for path in python_files(shell):
        assert not imported_packages(path) & others, path


def test_serving_imports_only_serving_dependencies() -> None:
    build_only = {"dvc", "pulumi", "pulumi_kubernetes", "pulumi_policy", "ruamel", "sklearn_onnx"}
    for path in python_files("serving"):
        assert not imported_packages(path) & build_only, path


def test_the_serving_image_cli_runs_without_the_other_shells() -> None:
    """The init container runs `modelctl fetch` from the serving image, which has no infra,
    policies or pipeline code: the CLI must start without them (and without the statistics'
    scipy, which only `drift` and `canary judge` load)."""
    script = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'infra', 'policies', 'pipeline', 'dvc', 'pulumi', 'scipy'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from modelctl.cli import main\n"
        "sys.exit(main(['fetch', '--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--sha256" in proc.stdout
