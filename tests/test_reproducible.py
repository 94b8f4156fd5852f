"""Bytes that do not depend on the CPU: pinned kernels, recorded build environments, a lock that
matches the code. Real git, real dvc, this repository's own history and registered versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelctl.core import buildenv, yamlio
from modelctl.core.state import load_model, model_names
from modelctl.repo import dvcstore, gitutil
from tests import pipeline_repo
from tests.conftest import Cli
from tests.pipeline_repo import MODEL

ROOT = Path(__file__).resolve().parents[1]
# What a caller may hold: another OpenBLAS core, numpy without AVX-512, more threads.
CALLER_KERNELS = {
    "openblas-skylakex": {"OPENBLAS_CORETYPE": "SkylakeX", "OMP_NUM_THREADS": "2"},
    "openblas-sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge", "OPENBLAS_NUM_THREADS": "2"},
    "numpy-without-avx512": {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
}
CHOICES = sorted(CALLER_KERNELS)
KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES")

needs_pinned_cpu = pytest.mark.skipif(
    bool(buildenv.missing_cpu_features(buildenv.pins())),
    reason="this CPU cannot run the pinned x86-64-v3 kernels",
)


def registered() -> list[tuple[str, str]]:
    return [(m, v) for m in model_names(ROOT) for v in load_model(ROOT, m).ordered_versions()]


def clone(target: Path) -> Path:
    """A fresh clone of this repository's committed tree and history, with its own DVC cache."""
    if gitutil.git(ROOT, "rev-parse", "--is-shallow-repository").strip() == "true":
        pytest.skip("a shallow clone lacks the registered versions' source commits; fetch with depth 0")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    return target


def caller(monkeypatch: pytest.MonkeyPatch, settings: dict[str, str]) -> None:
    for key in KERNEL_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)


@needs_pinned_cpu
@pytest.mark.slow
@pytest.mark.parametrize(
    ("version", "kernels"),
    # One caller choice per version, rotating, so that each choice meets versions of several
    # formats (there are more versions than choices).
    [(version, CHOICES[index % len(CHOICES)]) for index, version in enumerate(registered())],
    ids=str,
)
def test_every_registered_version_rebuilds_to_its_record_whatever_kernels_the_caller_picks(
    version: tuple[str, str], kernels: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    model, name = version
    repo = clone(tmp_path / "repo")
    caller(monkeypatch, CALLER_KERNELS[kernels])

    code, out, err = cli(
        repo, "reproduce", model, name, "--force", "--remote", str(tmp_path / "remote"), "--json"
    )

    assert code == 0, err
    assert json.loads(out)["rebuilt"] is True
    record = load_model(ROOT, model).versions[name]
    for obj in (record.artifact, record.profile):
        assert pipeline_repo.md5_of(tmp_path / "remote" / dvcstore.object_path(obj.md5)) == obj.md5


@needs_pinned_cpu
def test_a_stage_loads_the_pinned_kernels_whatever_the_caller_sets(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = pipeline_repo.copy(pipeline_repo.template(tmp_path_factory), tmp_path / "repo")
    built: dict[str, str] = {}
    for name, settings in {"default": {}, **CALLER_KERNELS}.items():
        env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
        # OpenBLAS names the core it loads ("Core: Haswell") when verbose.
        env.update(settings, OPENBLAS_VERBOSE="2", PYTHONPATH=str(root))
        for stage in ("train",) if built else ("prepare", "train"):
            proc = subprocess.run(
                [sys.executable, "-m", "pipeline", stage, "churn"],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, proc.stderr
        cores = {line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Core:")}
        assert cores == {"Core: Haswell"}, name
        built[name] = pipeline_repo.md5_of(root / "artifacts/churn/model.skops")
    assert len(set(built.values())) == 1, built


def test_a_stage_started_without_the_launcher_refuses(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = pipeline_repo.template(tmp_path_factory)

    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.train", MODEL], cwd=root, capture_output=True, text=True
    )

    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"run the stage as `python -m pipeline train {MODEL}` (dvc repro does): it pins the numeric "
        "kernels before numpy loads, so the bytes do not depend on the CPU"
    ]


def test_the_committed_lock_matches_the_code_and_check_names_a_stale_dependency(
    tmp_path: Path, cli: Cli
) -> None:
    repo = clone(tmp_path / "repo")
    assert cli(repo, "check")[0] == 0
    # A fresh clone has no data: every stage misses outputs, none has changed code or params.
    report = json.loads(dvcstore.run_dvc(repo, "status", "--json"))
    tracked = gitutil.tracked_files(repo)
    for stage, changes in report.items():
        for change in changes:
            assert set(change) <= {"changed deps", "changed outs"}, (stage, change)
            for path, state in change.get("changed deps", {}).items():
                assert (path not in tracked, state) == (True, "deleted"), (stage, path)

    with (repo / "pipeline" / "train.py").open("a", encoding="utf-8") as handle:
        handle.write("# an edit nobody reran the pipeline for\n")
    params = yamlio.load(repo / "params.yaml")
    params["models"]["churn"]["train"]["C"] = 0.5
    yamlio.dump_file(repo / "params.yaml", params)
    code, _, err = cli(repo, "check")

    assert code == 1
    assert err.splitlines() == [
        "error: dvc.lock: stage train@churn recorded another params.yaml than the working tree holds; "
        "run `dvc repro` and commit dvc.lock",
        "error: dvc.lock: stages train@fraud-detection, train@churn recorded another pipeline/train.py "
        "than the working tree holds; run `dvc repro` and commit dvc.lock",
    ]


def test_register_records_the_build_environment_and_models_show_prints_it(
    tmp_path_factory: pytest.TempPathFactory, cli: Cli
) -> None:
    root = pipeline_repo.template(tmp_path_factory)

    build = pipeline_repo.record(root, "v1.1.0").build

    assert build is not None
    assert (build.machine, build.kernels) == (buildenv.machine(), buildenv.pins())
    assert build.packages["numpy"] == buildenv.package_versions()["numpy"]
    assert set(build.packages) == set(buildenv.PACKAGES)
    code, out, _ = cli(root, "models", "show", MODEL)
    assert code == 0
    assert f"  v1.1.0  Python {build.python} on {build.machine}; numpy {build.packages['numpy']}" in out
    assert "OPENBLAS_CORETYPE=Haswell" in out


def _edit_record(root: Path, version: str, path: list[str], value: str) -> None:
    doc = yamlio.load(root / "models" / MODEL / "model.yaml")
    node = doc["versions"][version]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    yamlio.dump_file(root / "models" / MODEL / "model.yaml", doc)


def test_reproduce_says_before_building_which_recorded_setting_differs_and_names_it_after_a_mismatch(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, cli: Cli
) -> None:
    root = pipeline_repo.copy(pipeline_repo.template(tmp_path_factory), tmp_path / "repo")
    _edit_record(root, "v1.0.0", ["build", "packages", "numpy"], "1.26.4")
    _edit_record(root, "v1.0.0", ["artifact", "md5"], "0" * 32)
    here = buildenv.package_versions()["numpy"]

    code, _, err = cli(root, "reproduce", MODEL, "v1.0.0")

    differs = f"numpy 1.26.4 recorded, {here} here"
    lines = err.splitlines()
    assert code == 1
    assert lines[0] == (
        f"{MODEL} v1.0.0: this machine cannot match the recorded build ({differs}); the rebuilt bytes may differ"
    )
    assert any("dvc repro" in line for line in lines[1:])
    assert f"the build here differs from the recorded one: {differs}" in lines[-1]
    assert "constraints.txt" not in err


def test_reproduce_all_goes_on_after_a_failure_and_reports_every_version(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, cli: Cli
) -> None:
    root = pipeline_repo.copy(pipeline_repo.template(tmp_path_factory), tmp_path / "repo")
    # A source commit the repository does not hold: v1.0.0 cannot be rebuilt.
    _edit_record(root, "v1.0.0", ["source_commit"], "f" * 40)

    code, out, _ = cli(root, "reproduce", "--all")

    remote = dvcstore.repo_config(root).remote
    assert code == 1
    assert out.splitlines() == [
        f"{MODEL} v1.0.0: failed: models/{MODEL}/model.yaml: versions.v1.0.0.source_commit: source commit "
        "ffffffffffff of v1.0.0 is not in this repository; fetch the whole history (git fetch --unshallow, "
        "or fetch-depth: 0 in CI) and retry",
        f"{MODEL} v1.1.0: rebuilt and pushed (artifact, profile to {remote}); md5 matches the record",
        "1 of 2 versions failed to reproduce",
    ]
    code, out, _ = cli(root, "reproduce", "--all", "--json")
    assert code == 1
    assert [(r["version"], r["rebuilt"], bool(r["error"])) for r in json.loads(out)] == [
        ("v1.0.0", False, True),
        ("v1.1.0", False, False),
    ]
