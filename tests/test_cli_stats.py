"""`modelctl drift` and `modelctl judge` as a user runs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelctl.cli import main
from modelctl.core.drift import fit_profile
from tests.factories import FEATURES, model_doc, write_repo
from tests.test_judge import arm, identical, snapshot

MODEL = "fraud-detection"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def drift_repo(tmp_path: Path) -> Path:
    """A repository whose v1.0.0 registers a real reference profile (with scores)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "repo"
    profile_path = root / "artifacts" / MODEL / "profile.npz"
    profile_path.parent.mkdir(parents=True)
    fit_profile(rng.normal(size=(4000, len(FEATURES))), FEATURES, scores=rng.beta(2, 5, 4000)).save(
        profile_path
    )
    doc = model_doc()
    doc["versions"]["v1.0.0"]["profile"]["sha256"] = hashlib.sha256(profile_path.read_bytes()).hexdigest()
    return write_repo(root, models={MODEL: doc}, git=False)


def write_csv(path: Path, data: np.ndarray[Any, Any], names: list[str]) -> Path:
    lines = [",".join(names)] + [",".join(f"{v:.6f}" for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["-C", str(root), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- drift


def test_drift_without_change_exits_zero_with_a_table(
    drift_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    current = write_csv(drift_repo / "current.csv", rng.normal(size=(3000, 4)), FEATURES)
    code, out, _ = run(drift_repo, capsys, "drift", MODEL, "v1.0.0", "--current", str(current))
    assert code == 0
    assert "no drift" in out.splitlines()[0]
    assert all(name in out for name in FEATURES)


def test_drift_found_exits_two_and_writes_json_and_html(
    drift_repo: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(size=(3000, 4))
    data[:, 1] += 0.5
    scores = rng.beta(2, 5, 3000)
    current = write_csv(tmp_path / "current.csv", np.column_stack([data, scores]), [*FEATURES, "score"])
    report = tmp_path / "report.html"
    code, out, err = run(
        drift_repo, capsys, "drift", MODEL, "v1.0.0", "--current", str(current),
        "--score-column", "score", "--report", str(report), "--json",
    )  # fmt: skip
    result = json.loads(out)
    assert code == 2
    assert f"wrote {report}" in err
    assert report.stat().st_mode & 0o777 == 0o644  # readable like the other reports
    assert result["drift_detected"] is True
    assert result["drifted"] == ["hour"]
    assert result["prediction"]["drifted"] is False
    page = report.read_text()
    assert page.count("<svg") == 1
    assert "hour" in page


def test_drift_reads_npy(drift_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = drift_repo / "current.npy"
    np.save(path, np.random.default_rng(3).normal(size=(500, 4)))
    code, out, _ = run(drift_repo, capsys, "drift", MODEL, "v1.0.0", "--current", str(path), "--json")
    assert code == 0
    assert json.loads(out)["rows_current"] == 500


def test_drift_reads_a_folder_of_parquet_files(drift_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A partitioned dataset, as Spark, pandas or a DVC stage write it, is read as one table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = drift_repo / "current"
    (folder / "day=1").mkdir(parents=True)
    (folder / "day=2").mkdir()
    data = np.random.default_rng(5).normal(size=(600, 4))
    for part, rows in (("day=1", data[:250]), ("day=2", data[250:])):
        table = pa.table({name: rows[:, i] for i, name in enumerate(FEATURES)})
        pq.write_table(table, folder / part / "part-0.parquet")
    code, out, _ = run(drift_repo, capsys, "drift", MODEL, "v1.0.0", "--current", str(folder), "--json")
    assert code == 0
    assert json.loads(out)["rows_current"] == 600
    (drift_repo / "empty").mkdir()
    code, out, err = run(drift_repo, capsys, "drift", MODEL, "v1.0.0", "--current", str(drift_repo / "empty"))
    assert (code, out) == (1, "")
    assert "empty: is a folder with no .parquet files; pass a .csv, .parquet or .npy file" in err


@pytest.mark.parametrize(
    ("version", "setup", "message"),
    [
        (
            "v9.9.9",
            None,
            "version v9.9.9 of fraud-detection is not registered; register it first or use one of: v1.0.0, v1.1.0",
        ),
        ("v1.1.0", None, "is in the workspace only as another profile (sha256 differs), and fetching"),
        ("v1.0.0", "remove", "is not in the workspace, and fetching it by content address failed"),
        ("v1.0.0", "columns", "missing columns: distance_km"),
    ],
)
def test_drift_problems_are_one_line_errors(
    drift_repo: Path, capsys: pytest.CaptureFixture[str], version: str, setup: str | None, message: str
) -> None:
    rng = np.random.default_rng(4)
    names = FEATURES[:3] if setup == "columns" else FEATURES
    current = write_csv(drift_repo / "current.csv", rng.normal(size=(50, len(names))), names)
    if setup == "remove":
        (drift_repo / "artifacts" / MODEL / "profile.npz").unlink()
    code, out, err = run(drift_repo, capsys, "drift", MODEL, version, "--current", str(current))
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert message in err


# ---------------------------------------------------------------- judge


def test_canary_judge_prints_the_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(identical(15_000)))
    code, out, _ = run(tmp_path, capsys, "judge", "--snapshot", str(path))
    assert code == 0
    assert out.startswith("fraud-detection on prod: PROMOTE canary v1.1.0 against v1.0.0")
    code, out, _ = run(tmp_path, capsys, "judge", "--snapshot", str(path), "--json")
    decision = json.loads(out)
    assert decision["action"] == "promote"
    assert [e["metric"] for e in decision["evidence"]] == ["errors", "latency", "accuracy", "score"]


def test_canary_judge_rolls_back_a_failing_canary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(snapshot(arm("v1.1.0", 10, 5000, 100), arm("v1.0.0", 90, 45_000, 450))))
    code, out, _ = run(tmp_path, capsys, "judge", "--snapshot", str(path), "--json")
    assert code == 2
    assert json.loads(out)["action"] == "rollback"


def test_the_judge_says_hold_with_exit_code_three(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(identical(50)))
    code, out, _ = run(tmp_path, capsys, "judge", "--snapshot", str(path), "--json")
    assert json.loads(out)["action"] == "hold"
    assert code == 3


def test_case_15_the_example_snapshot_with_a_window_shorter_than_its_interval_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 15's snapshot half: analysis/snapshot.example.json with a 5-second window and
    `interval: 10m` is a hold (exit 3) saying how long is left; the same window as a format 1
    snapshot (committed before the format said when the step began) is judged as it was, and
    says that the interval is not applied to it."""
    example = json.loads((ROOT / "analysis" / "snapshot.example.json").read_text())
    example["window_start"] = example["step_started"] = "2026-11-24T12:29:55Z"
    example["analysis"]["interval"] = "10m"
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(example))
    code, out, err = run(tmp_path, capsys, "judge", "--snapshot", str(path))
    assert code == 3, err
    assert (
        out.splitlines()[1]
        == "  - interval: the step has run for 5s of its 10m (analysis.interval); look again in 10 min"
    )
    assert "  needs: time, about 10 min (analysis.interval)" in out.splitlines()
    for key in ("format", "step_started", "notes"):
        del example[key]
    path.write_text(json.dumps(example))
    code, out, err = run(tmp_path, capsys, "judge", "--snapshot", str(path))
    assert code == 0
    assert err.startswith(f"note: {path} is a format 1 snapshot (no 'format' key), whose window is shorter")


def test_canary_judge_bad_snapshot_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "snapshot.json"
    snap = identical(1000)
    snap["canary"]["errors"] = 5000
    path.write_text(json.dumps(snap))
    code, _out, err = run(tmp_path, capsys, "judge", "--snapshot", str(path))
    assert code == 1
    assert err.strip() == f"error: {path}: canary: errors (5000) exceed requests (1000); check the counters"
    path.write_text("{not json")
    code, _, err = run(tmp_path, capsys, "judge", "--snapshot", str(path))
    assert code == 1
    assert "not valid JSON" in err


def test_canary_release_command_still_parses() -> None:
    from modelctl.cli import build_parser

    args = build_parser().parse_args(["canary", MODEL, "v1.1.0", "--stack", "staging"])
    assert (args.model, args.version, args.stack) == (MODEL, "v1.1.0", "staging")
    args = build_parser().parse_args(["canary", "judge", "--snapshot", "s.json"])
    assert args.snapshot == "s.json"


def test_the_old_spelling_canary_judge_still_works_with_a_deprecation_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(identical(15_000)))
    code, out, err = run(tmp_path, capsys, "canary", "judge", "--snapshot", str(path), "--json")
    assert code == 0
    assert json.loads(out)["action"] == "promote"
    assert err.strip() == (
        "warning: 'modelctl canary judge' is deprecated and goes in the next release; use 'modelctl judge'"
    )
