"""`modelctl drift <model> <version> --current FILE|FOLDER`: current data against the version's profile.

Prints the per-feature table (or JSON with --json), writes an HTML report with --report, and
exits with status 1 when drift is detected, so that scripts can branch on it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, get_args

from modelctl.cli import (
    EXIT_FINDING,
    EXIT_OK,
    MODEL_HELP,
    VERSION_HELP,
    Result,
    add_command,
    progress,
    repo_root,
)
from modelctl.core.errors import UserError, unknown_version
from modelctl.core.schema import Correction
from modelctl.core.state import load_model, model_file
from modelctl.core.yamlio import write_atomic
from modelctl.repo import registry

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from modelctl.core.drift import DriftReport, FeatureDrift, Profile

Floats: TypeAlias = "npt.NDArray[np.float64]"
FORMATS = (".csv", ".parquet", ".npy")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub,
        "drift",
        run,
        f"compare current data with a version's reference profile (exit status {EXIT_FINDING} when it drifted)",
    )
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("version", help=VERSION_HELP)
    parser.add_argument(
        "--current",
        required=True,
        metavar="FILE",
        help="rows to check: .csv or .parquet with a header, .npy, or a folder of .parquet files",
    )
    parser.add_argument("--report", metavar="OUT.html", help="also write an HTML report with plots")
    parser.add_argument(
        "--score-column",
        metavar="NAME",
        help="column of the model's positive-class probability, for prediction drift (csv/parquet)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.05, help="error rate across all columns (default 0.05)"
    )
    parser.add_argument(
        "--correction",
        choices=get_args(Correction),
        default="holm",
        help="multiple-testing correction across the columns (default holm)",
    )
    parser.add_argument(
        "--effect-floor",
        type=float,
        default=0.0,
        metavar="SIZE",
        help="smallest effect (Wasserstein distance in reference std; Cohen's w) that counts as drift",
    )


def run(args: argparse.Namespace) -> Result:
    # The statistics (scipy) load when this command runs, so every other command starts fast.
    from modelctl.core.drift import detect_drift

    if not 0 < args.alpha < 1:
        raise UserError("--alpha", f"{args.alpha:g} is not between 0 and 1", "pass e.g. --alpha 0.05")
    root = repo_root(args)
    if args.report:
        _require_folder(Path(args.report))
    profile = load_profile(root, args.model, args.version)
    current, scores = read_current(Path(args.current), profile, args.score_column)
    if current.shape[0] == 0:
        raise UserError(args.current, "holds no rows", "pass a file with at least one row of data")
    report = detect_drift(
        profile,
        current,
        scores=scores,
        alpha=args.alpha,
        correction=args.correction,
        effect_floor=args.effect_floor,
    )
    if args.report:
        from modelctl.core.drift.html import render_html

        page = render_html(
            report,
            profile,
            current,
            scores=scores,
            title=f"Drift: {args.model} {args.version} vs {args.current}",
        )
        write_atomic(Path(args.report), page)
        progress(f"wrote {args.report}")
    data = {"model": args.model, "version": args.version, "current": args.current, **report.to_dict()}
    if args.report:
        data["report"] = args.report
    return Result(
        data, format_table(report, args), exit_code=EXIT_FINDING if report.drift_detected else EXIT_OK
    )


def _require_folder(report: Path) -> None:
    """Refuse a report path whose folder is missing before any work is done."""
    folder = report.parent
    if not folder.is_dir():
        raise UserError(
            str(report),
            f"folder {str(folder)!r} does not exist",
            "create it first or pass another --report path",
        )


def load_profile(root: Path, model: str, version: str) -> Profile:
    """The version's registered reference profile: the workspace copy when it is that one (same
    sha256), otherwise fetched by content address from the DVC cache or remote, both hashes verified."""
    registered = load_model(root, model)
    record = registered.versions.get(version)
    if record is None:
        raise unknown_version(model_file(model), model, version, registered.ordered_versions())
    workspace = root / record.profile.path
    if not workspace.is_file():
        absent = "not in the workspace"
    elif hashlib.sha256(workspace.read_bytes()).hexdigest() != record.profile.sha256:
        absent = "in the workspace only as another profile (sha256 differs)"
    else:
        return _read_profile(workspace, record.profile.path)
    with tempfile.TemporaryDirectory() as folder:
        fetched = Path(folder) / "profile.npz"
        try:
            registry.fetch_version(root, model, version, out=None, profile_out=fetched, remote=None)
        except UserError as exc:
            raise UserError(
                record.profile.path,
                f"the profile registered for {model} {version} is {absent}, and fetching it "
                f"by content address failed ({exc.problem})",
                f"run 'dvc pull' or 'modelctl reproduce {model} {version}'",
            ) from None
        return _read_profile(fetched, record.profile.path)


def _read_profile(path: Path, shown: str) -> Profile:
    from modelctl.core.drift import Profile

    try:
        return Profile.load(path)
    except (ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(shown, f"unreadable reference profile ({exc})", "run 'dvc pull' again") from None


def read_current(path: Path, profile: Profile, score_column: str | None) -> tuple[Floats, Floats | None]:
    """The feature matrix (profile order) and, with `score_column`, the scores of a data file."""
    import numpy as np

    if path.is_dir():
        # A partitioned dataset (Spark, pandas, DVC outputs): pyarrow reads the folder's parquet files as one table.
        if not any(path.rglob("*.parquet")):
            raise UserError(
                str(path),
                "is a folder with no .parquet files",
                "pass a .csv, .parquet or .npy file, or a folder of .parquet files",
            )
        suffix = ".parquet"
    elif not path.is_file():
        raise UserError(str(path), "no such file", "pass the path of a .csv, .parquet or .npy file")
    else:
        suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, profile, score_column), None
    if suffix not in FORMATS:
        raise UserError(str(path), f"unknown file type {suffix!r}", f"use one of: {', '.join(FORMATS)}")
    columns = _read_parquet(path) if suffix == ".parquet" else _read_csv(path)
    _require_header(path, columns)
    wanted = [*profile.feature_names, *([score_column] if score_column else [])]
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise UserError(
            str(path),
            f"missing columns: {', '.join(missing)}",
            "give every feature of the model's signature a column",
        )
    matrix = np.column_stack([_numeric(path, name, columns[name]) for name in profile.feature_names])
    return matrix, (_numeric(path, score_column, columns[score_column]) if score_column else None)


def _require_header(path: Path, columns: dict[str, Any]) -> None:
    """A first line of numbers is data, not column names: the file has no header row."""
    numbers = [name for name in columns if _is_number(name)]
    if numbers:
        raise UserError(
            str(path),
            f"the first line holds values ({', '.join(numbers[:3])}, ...), not column names: there is no header row",
            "write the feature names as the first line",
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npy(path: Path, profile: Profile, score_column: str | None) -> Floats:
    import numpy as np

    if score_column:
        raise UserError(
            str(path), "a .npy file has no column names", "give the scores in a .csv or .parquet file"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UserError(str(path), f"not a numeric .npy array ({exc})", "save it with numpy.save") from None
    width = len(profile.feature_names)
    if data.ndim != 2 or data.shape[1] != width or not np.issubdtype(data.dtype, np.number):
        raise UserError(
            str(path),
            f"expected a numeric array of {width} columns (the profile's features), got shape {data.shape}",
            f"save rows x features in this order: {', '.join(profile.feature_names)}",
        )
    matrix: Floats = data.astype(np.float64, copy=False)
    return matrix


def _read_csv(path: Path) -> dict[str, Any]:
    try:
        import pyarrow.csv as pacsv
    except ImportError:
        return _read_csv_stdlib(path)
    try:
        table = pacsv.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise UserError(
            str(path), f"unreadable CSV ({str(exc).splitlines()[0]})", "write a header row and numbers"
        ) from None
    return {name: table.column(i).to_numpy() for i, name in enumerate(table.column_names)}


def _read_csv_stdlib(path: Path) -> dict[str, Any]:
    import numpy as np

    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = list(reader)
    return {
        name: np.array([row[i] if i < len(row) else "" for row in rows], dtype=object)
        for i, name in enumerate(header)
    }


def _read_parquet(path: Path) -> dict[str, Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            str(path), "reading parquet needs pyarrow", "pip install pyarrow, or pass a .csv"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise UserError(str(path), f"unreadable parquet ({exc})", "write it with pyarrow or pandas") from None
    return {name: table.column(i).to_numpy() for i, name in enumerate(table.column_names)}


def _numeric(path: Path, name: str, values: Any) -> Floats:
    """A column as float64; empty cells are missing (NaN)."""
    import numpy as np

    if np.asarray(values).dtype.kind == "O":
        values = [np.nan if v is None or v == "" else v for v in values]
    try:
        column: Floats = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(
            str(path), f"column {name!r} is not numeric", "write numbers (category codes for categories)"
        ) from None
    return column


def format_table(report: DriftReport, args: argparse.Namespace) -> str:
    tested = [*report.features, *([report.prediction] if report.prediction else [])]
    verdict = (
        f"DRIFT in {len(report.drifted)} of {len(tested)} columns" if report.drift_detected else "no drift"
    )
    lines = [
        f"{args.model} {args.version} vs {args.current}: {verdict} "
        f"({report.rows_current:,} rows against {report.rows_reference:,} reference rows, "
        f"{report.correction} at alpha {report.alpha:g})",
        "",
    ]
    width = max(len("column"), *(len(f.name) for f in tested))
    lines.append(
        f"{'column':<{width}}  test  statistic   p-value  adjusted    effect     PSI  missing  drifted"
    )
    for item in sorted(tested, key=lambda f: (f.p_adjusted, f.name)):
        lines.append(_row(item, width))
    if args.report:
        lines += ["", f"report: {args.report}"]
    return "\n".join(lines)


def _row(item: FeatureDrift, width: int) -> str:
    return (
        f"{item.name:<{width}}  {item.test:<4}  {_g(item.statistic):>9}  {_g(item.p_value):>8}  "
        f"{_g(item.p_adjusted):>8}  {_g(item.effect_size):>8}  {_g(item.psi):>6}  "
        f"{item.missing_current:>7.1%}  {'YES' if item.drifted else 'no':>7}"
    )


def _g(value: float) -> str:
    import numpy as np

    return f"{value:.3g}" if np.isfinite(value) else "n/a"
