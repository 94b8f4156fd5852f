"""`modelctl render`: one YAML file per object with stable names, stale files removed, summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.build import build_stack
from infra.render import render_files
from modelctl.cli import main
from modelctl.core.state import load_state
from tests.factories import full_docs, write_repo


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_repo(tmp_path / "repo", *full_docs(), git=False)


def test_each_object_is_one_file_that_parses_back_to_it(root: Path) -> None:
    state = load_state(root)
    files = render_files(state, "prod")
    documents = [yaml.safe_load(text) for name, text in files.items() if name.endswith(".yaml")]
    assert sorted(documents, key=identity) == sorted(build_stack(state, "prod"), key=identity)
    assert list(files) == sorted(files)
    assert not any("&id" in text or "*id" in text for text in files.values()), "no YAML anchors for reviewers"
    assert "fraud-detection/virtualservice.yaml" in files
    assert "fraud-detection/deployment-v1-2-0.yaml" in files
    assert "alertmanager/alertmanager.yml" in files


def identity(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def test_render_writes_the_stack_folder_and_prints_a_summary(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-C", str(root), "render", "--stack", "prod"]) == 0
    out = capsys.readouterr().out
    assert "stack prod (production, namespace models-prod)" in out
    assert "fraud-detection: v1.1.0 100% (warm v1.0.0; shadow v1.2.0 10%)" in out
    assert "alert receivers: oncall-email, ml-slack, pager" in out
    written = sorted(
        p.relative_to(root / "rendered/prod").as_posix() for p in (root / "rendered/prod").rglob("*.y*ml")
    )
    assert written == list(render_files(load_state(root), "prod"))


def test_rendering_twice_gives_identical_bytes(root: Path, tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert main(["-C", str(root), "render", "--stack", "staging", "--out", str(tmp_path / out)]) == 0
    for path in (tmp_path / "a").rglob("*.yaml"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_files_of_versions_no_longer_deployed_are_removed(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["-C", str(root), "render", "--stack", "prod", "--out", str(out)]) == 0
    (out / "README.md").write_text("notes kept by the team\n")
    (out / "fraud-detection/extra.yaml").write_text("kind: Kept\n")
    models, stacks = full_docs()
    del stacks["prod"]["config"]["modelctl:releases"]["fraud-detection"]["traffic"]["v1.0.0"]
    write_repo(root, models, stacks, git=False)
    capsys.readouterr()
    assert main(["-C", str(root), "render", "--stack", "prod", "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["removed"] == [
        "fraud-detection/deployment-v1-0-0.yaml",
        "fraud-detection/destinationrule-v1-0-0.yaml",
        "fraud-detection/horizontalpodautoscaler-v1-0-0.yaml",
    ]
    assert not (out / "fraud-detection/deployment-v1-0-0.yaml").exists()
    assert (out / "README.md").exists()
    assert (out / "fraud-detection/extra.yaml").exists(), "files render did not write are left alone"
    assert data["summary"]["models"]["fraud-detection"]["weights"] == {"v1.1.0": 100}
    assert "fraud-detection/virtualservice.yaml" in data["files"]


def test_an_unknown_stack_is_one_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", str(root), "render", "--stack", "qa"]) == 1
    assert (
        capsys.readouterr().err
        == "error: Pulumi.qa.yaml: no stack named 'qa'; use one of: dev, prod, staging\n"
    )
