"""`python -m bench.serving`: the seed-style baseline, `serving` and a bare ASGI ceiling app on the
same model, machine and load, for every artifact format.

Trains a 30-feature HistGradientBoosting model (seeded), an XGBoost and a LightGBM model of the
same size on the same data, and converts the HistGradientBoosting to ONNX; serves each format
with the baseline (its own library behind the seed's Flask app) and with `serving`, and the
ceiling app once; loads each with wrk at every concurrency for the same duration, and prints
req/s, p50, p99, non-2xx answers and server CPU per request, with the ratios and the targets.
Every server runs with one OpenMP/BLAS thread. The table also goes to bench/serving/RESULTS.md;
the exit code is 1 when any answer was not a 2xx (the figures would not be comparable), else 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import orjson
import skops.io
from lightgbm import LGBMClassifier
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits
from xgboost import XGBClassifier

from modelctl.core.drift import fit_profile
from modelctl.core.formats import FORMATS
from modelctl.core.schema import Feature, Output, Signature
from modelctl.core.servingspec import ServingSpec
from modelctl.core.state import load_allow_list
from modelctl.core.trusted import reviewed
from serving.compiled import compile_estimator
from serving.options import PARITY_TOLERANCE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEED = 20261124
FEATURES = 30
THREAD_PINS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
BASELINE, OURS, CEILING = "baseline", "serving", "ceiling"
# Per concurrency: at least this many times the baseline's req/s, and at most this p99 (ms).
TARGETS = {8: (12.0, 2.0), 64: (15.0, 10.0)}
CEILING_SHARE = 0.5  # at least this share of the ceiling app's req/s
CPU_TARGET_US = 60.0
# params.yaml's fraud-detection settings: one-row predict_proba ~680 µs, ~13 µs a row in batches of 64.
TRAIN_PARAMS = {
    "max_iter": 150,
    "learning_rate": 0.08,
    "max_leaf_nodes": 15,
    "l2_regularization": 1.0,
    "class_weight": "balanced",
    "early_stopping": False,
    "random_state": 0,
}
# The same size in the other libraries: 150 trees of depth 4 (at most 16 leaves), of 15 leaves.
XGBOOST_PARAMS: dict[str, Any] = {
    "n_estimators": 150,
    "max_depth": 4,
    "learning_rate": 0.1,
    "n_jobs": 1,
    "random_state": 0,
}
LIGHTGBM_PARAMS: dict[str, Any] = {
    "n_estimators": 150,
    "num_leaves": 15,
    "learning_rate": 0.08,
    "reg_lambda": 1.0,
    "class_weight": "balanced",
    "n_jobs": 1,
    "verbose": -1,
    "random_state": 0,
}
SKOPS = "skops"  # the format the targets, the floor and the one-row cost are measured on
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GC_AND_BATCH = (
    "model_batch_size_sum",
    "model_batch_size_count",
    "model_gc_pause_seconds_count",
    "model_gc_pause_seconds_sum",
)


@dataclass(frozen=True)
class Run:
    server: str
    format: str  # the artifact format served ("" for the ceiling, which serves none)
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float
    other_cores: float  # CPU used meanwhile by everything but this server and wrk, in cores
    # From our server's /metrics over the run (the baseline exports none).
    batch_mean: float | None = None
    gc_pauses: int | None = None
    gc_ms: float | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def train(folder: Path) -> tuple[dict[str, ServingSpec], npt.NDArray[np.float64]]:
    """A realistic model in every format, its artifact, profile and spec; returns the held-out
    rows to send."""
    rows, labels = make_classification(
        n_samples=30_000, n_features=FEATURES, n_informative=12, n_redundant=6,
        weights=[0.9], flip_y=0.02, random_state=SEED,
    )  # fmt: skip
    train_rows, test_rows, train_labels, _ = train_test_split(rows, labels, test_size=0.2, random_state=SEED)
    with threadpool_limits(limits=1):
        forest = HistGradientBoostingClassifier(**TRAIN_PARAMS).fit(train_rows, train_labels)
        models = {
            SKOPS: forest,
            "xgboost": XGBClassifier(**XGBOOST_PARAMS).fit(train_rows, train_labels),
            "lightgbm": LGBMClassifier(**LIGHTGBM_PARAMS).fit(train_rows, train_labels),
            "onnx": forest,  # converted by skl2onnx
        }
    names = [f"f{j:02d}" for j in range(FEATURES)]
    fit_profile(train_rows, names).save(folder / "profile.npz")
    spread = train_rows.std(axis=0)
    signature = Signature(
        features=[
            Feature(
                name=name,
                min=float(train_rows[:, j].min() - 10 * spread[j]),
                max=float(train_rows[:, j].max() + 10 * spread[j]),
            )
            for j, name in enumerate(names)
        ]
    )
    specs = {}
    for fmt, model in models.items():
        artifact = folder / FORMATS[fmt].file_name
        FORMATS[fmt].save(model, artifact)
        data = artifact.read_bytes()
        stored = FORMATS[fmt].stored_types
        specs[fmt] = ServingSpec(
            model="bench",
            version="v1.0.0",
            artifact_path=str(artifact),
            sha256=hashlib.sha256(data).hexdigest(),
            format=fmt,
            # What `modelctl register` records: the artifact's types, each allowed by the reviewed list.
            trusted_types=tuple(
                reviewed(stored(data), load_allow_list(ROOT), artifact.name) if stored else ()
            ),
            signature=signature,
            output=Output(classes=["negative", "positive"], positive_class="positive"),
            profile_path=str(folder / "profile.npz"),
            profile_sha256=hashlib.sha256((folder / "profile.npz").read_bytes()).hexdigest(),
        )
    return specs, test_rows


@dataclass(frozen=True)
class OneRow:
    """CPU µs of one-row scikit-learn calls in this process, with one OpenMP thread."""

    predict_proba: float
    validation: float  # HistGradientBoosting's input checks (check_array, dataframe checks)
    trees: int
    python: float  # sum(range(1000)): how fast this machine runs plain Python now

    @property
    def per_tree(self) -> float:
        return (self.predict_proba - self.validation) / self.trees


def cpu_us(call: Callable[[], object], repeat: int) -> float:
    """The least CPU µs per call over three rounds of `repeat` calls (this thread's CPU time)."""
    call()
    rounds = []
    for _ in range(3):
        started = time.thread_time()
        for _ in range(repeat):
            call()
        rounds.append((time.thread_time() - started) / repeat * 1e6)
    return min(rounds)


def one_row_cost(spec: ServingSpec, row: npt.NDArray[np.float64]) -> OneRow:
    """Where the baseline's time per request goes: one `predict_proba` on one row."""
    model = skops.io.load(spec.artifact_path, trusted=list(spec.trusted_types))
    rows = row.reshape(1, -1)
    with threadpool_limits(limits=1, user_api="openmp"):
        return OneRow(
            predict_proba=cpu_us(lambda: model.predict_proba(rows), 200),
            validation=cpu_us(lambda: model._preprocess_X(rows, reset=False), 1000),
            trees=len(model._predictors),
            python=cpu_us(lambda: sum(range(1000)), 3000),
        )


# Batch sizes whose compiled-engine cost the report gives (1 row, 8 clients' wave, the largest batch).
ENGINE_BATCHES = (1, 8, 64)


@dataclass(frozen=True)
class EngineCost:
    """CPU µs per row of the engine the server predicts with, per batch size in ENGINE_BATCHES."""

    name: str
    per_row: dict[int, float]


def engine_cost(spec: ServingSpec, rows: npt.NDArray[np.float64]) -> EngineCost:
    """What a request costs the server's engine (treelite's GTIL for this model) before any HTTP
    or Python work, measured in this process."""
    model = skops.io.load(spec.artifact_path, trusted=list(spec.trusted_types))
    engine = compile_estimator(model, rows[:256], PARITY_TOLERANCE)
    per_row = {}
    for size in ENGINE_BATCHES:
        batch = np.ascontiguousarray(rows[:size])
        per_row[size] = cpu_us(partial(engine.predict_proba, batch), 200) / size
    return EngineCost(engine.name, per_row)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def commands(spec: ServingSpec | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each server's command line (without its port) and environment: the baseline and ours for
    `spec`, or the ceiling, which serves no model, for None."""
    env = {**os.environ, **THREAD_PINS, "PYTHONPATH": str(ROOT)}
    if spec is None:
        return {
            CEILING: (
                [sys.executable, "-m", "uvicorn", "bench.serving.ceiling:app", "--loop", "uvloop", "--http",
                 "httptools", "--no-access-log", "--log-level", "warning", "--host", "127.0.0.1", "--port"],
                env,
            ),
        }  # fmt: skip
    return {
        BASELINE: (
            [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "sync", "bench.serving.baseline:app",
             "--bind"],
            {**env, "BENCH_MODEL": spec.artifact_path, "BENCH_FORMAT": spec.format,
             "BENCH_TRUSTED": json.dumps(list(spec.trusted_types))},
        ),
        OURS: (
            [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--drift-interval-s", "10", "--port"],
            {**env, **spec.to_env()},
        ),
    }  # fmt: skip


def wait_ready(process: subprocess.Popen[bytes], url: str, body: bytes) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode} before answering")
        try:
            response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=2)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not answer within 90 s")


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU of a process and all its descendants (gunicorn's workers)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    family, total = {root_pid}, 0.0
    for pid in sorted(stats):  # parents have lower pids than their children here
        parent, seconds = stats[pid]
        if pid in family or parent in family:
            family.add(pid)
            total += seconds
    return total


def wrk(url: str, concurrency: int, seconds: int, bodies: Path) -> dict[str, int]:
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(HERE / "post.lua"),
            url,
        ],
        env={**os.environ, "BODIES_FILE": str(bodies)},
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    summary: dict[str, int] = json.loads(line.removeprefix("RESULT "))
    return summary


@dataclass(frozen=True)
class Load:
    url: str
    bodies: Path
    seconds: int


def server_metrics(url: str) -> dict[str, float]:
    """Batch and GC totals from /metrics, summed over label sets; empty without /metrics."""
    response = httpx.get(url.replace("/predict", "/metrics"), timeout=5)
    if response.status_code != 200:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in GC_AND_BATCH:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idling and waiting for I/O, since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def wrk_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    return usage.ru_utime + usage.ru_stime


def measure(server: str, fmt: str, pid: int, load: Load, concurrency: int) -> Run:
    before, metrics_before = cpu_seconds(pid), server_metrics(load.url)
    busy_before, wrk_before = machine_busy_seconds(), wrk_cpu_seconds()
    summary = wrk(load.url, concurrency, load.seconds, load.bodies)
    cpu = cpu_seconds(pid) - before
    others = machine_busy_seconds() - busy_before - cpu - (wrk_cpu_seconds() - wrk_before)
    grew = {name: value - metrics_before[name] for name, value in server_metrics(load.url).items()}
    requests = summary["requests"]
    errors = sum(summary[k] for k in ("connect", "read", "write", "non_2xx", "timeout"))
    return Run(
        server=server,
        format=fmt,
        concurrency=concurrency,
        requests=requests,
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=errors,
        cpu_us=cpu / max(requests, 1) * 1e6,
        other_cores=max(others, 0.0) / (summary["duration_us"] / 1e6),
        batch_mean=grew["model_batch_size_sum"] / grew["model_batch_size_count"] if grew else None,
        gc_pauses=int(grew["model_gc_pause_seconds_count"]) if grew else None,
        gc_ms=grew["model_gc_pause_seconds_sum"] * 1000 if grew else None,
    )


@dataclass(frozen=True)
class Server:
    name: str
    format: str
    pid: int
    load: Load

    def engine(self) -> str:
        """What predicts in our server (its OIP metadata), or the baseline's library."""
        if self.name != OURS:
            return ""
        metadata = httpx.get(self.load.url.replace("/predict", "/v2/models/bench"), timeout=5).json()
        return str(metadata["parameters"]["engine"])


@contextmanager
def running(
    name: str, fmt: str, command: tuple[list[str], dict[str, str]], args: argparse.Namespace, folder: Path
) -> Iterator[Server]:
    """A started, answering and warmed-up server; stopped on exit."""
    port = free_port()
    address = f"127.0.0.1:{port}" if name == BASELINE else str(port)
    load = Load(f"http://127.0.0.1:{port}/predict", folder / "bodies.jsonl", args.duration)
    with (folder / f"{name}-{fmt}.log").open("wb") as output:
        process = subprocess.Popen(
            [*command[0], address], env=command[1], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(process, load.url, load.bodies.read_bytes().splitlines()[0])
            wrk(
                load.url, max(args.concurrency), args.warmup, load.bodies
            )  # warm caches and allocators; discarded
            yield Server(name, fmt, process.pid, load)
        finally:
            process.terminate()
            process.wait(timeout=60)


def table(runs: list[Run]) -> str:
    lines = [
        "| server | format | concurrency | req/s | p50 ms | p99 ms | errors | server CPU µs/req | mean batch | GC pauses (total ms) | other load (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.server} | {r.format or '–'} | {r.concurrency} | {r.rate:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {r.cpu_us:,.0f} | "
        + (f"{r.batch_mean:.1f} | {r.gc_pauses} ({r.gc_ms:.0f}) |" if r.batch_mean is not None else "– | – |")
        + f" {r.other_cores:.2f} |"
        for r in runs
    ]
    return "\n".join(lines)


def verdicts(runs: list[Run]) -> str:
    by = {(r.server, r.concurrency): r for r in runs if r.format in (SKOPS, "")}
    lines = [
        "| concurrency | req/s ratio (target) | share of the ceiling (target) | p99 ms (target) | "
        "CPU µs/req (target) | CPU ratio | non-2xx and errors | targets |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for concurrency in sorted({r.concurrency for r in runs}):
        ours, base, ceiling = (by[(name, concurrency)] for name in (OURS, BASELINE, CEILING))
        min_ratio, max_p99 = TARGETS.get(concurrency, (0.0, float("inf")))
        ratio, share = ours.rate / base.rate, ours.rate / ceiling.rate
        met = (
            ratio >= min_ratio
            and share >= CEILING_SHARE
            and ours.p99_ms <= max_p99
            and ours.cpu_us <= CPU_TARGET_US
            and ours.errors == 0
        )
        lines.append(
            f"| {concurrency} | {ratio:.1f}× (≥ {min_ratio:g}×) | {share:.0%} (≥ {CEILING_SHARE:.0%}) | "
            f"{ours.p99_ms:.2f} (≤ {max_p99:g}) | {ours.cpu_us:.0f} (≤ {CPU_TARGET_US:g}) | "
            f"{base.cpu_us / ours.cpu_us:.1f}× less | {ours.errors} | {'met' if met else 'MISSED'} |"
        )
    return "\n".join(lines)


def one_row_section(cost: OneRow) -> str:
    return f"""## One-row scikit-learn `predict_proba`: where the baseline's time goes

Measured in the benchmark process before the runs, CPU time per call, one OpenMP thread:
{cost.predict_proba:,.0f} µs per one-row `predict_proba`, of which {cost.validation:,.0f} µs are
HistGradientBoosting's input checks (scikit-learn's `check_array`, feature names, narwhals'
dataframe checks) and the other {cost.predict_proba - cost.validation:,.0f} µs are
{cost.trees} trees × {cost.per_tree:.1f} µs. This machine ran `sum(range(1000))` in
{cost.python:.1f} µs meanwhile.

HistGradientBoosting predicts one tree at a time: per tree a few Python calls
(`functools.partial`, `TreePredictor.predict`, `np.empty`, an in-place add) and a Cython call
that opens an OpenMP parallel region even for one thread and one row. So a one-row call costs
the number of trees times a per-call overhead that follows the CPU's single-thread speed and
the contention on it; the rows cost almost nothing. The issue's ~420 µs per call (~2.8 µs a
tree) was measured on a quiet machine; here a tree costs {cost.per_tree:.1f} µs. scikit-learn
1.9's input checks, narwhals' included, are {cost.validation / cost.predict_proba:.0%} of the
call (skipping what can be skipped with `sklearn.config_context(assume_finite=True,
skip_parameter_validation=True)` does not change the total measurably). Without
`OMP_NUM_THREADS=1`, each tree's parallel region starts a thread per core, which costs far
more than the tree (the reason every server here runs with one OpenMP thread).
"""


def floor_section(runs: list[Run], engine: EngineCost) -> str:
    """What one request costs before any of the server's own work: the ceiling app's CPU per
    request plus one row of a batch as large as the clients can make (one-row requests)."""
    lines = [
        "| clients | ceiling µs/req | engine µs/row (batch) | floor µs/req | target | left for the server's own work |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for ceiling in sorted((r for r in runs if r.server == CEILING), key=lambda r: r.concurrency):
        batch = max(size for size in ENGINE_BATCHES if size <= ceiling.concurrency)
        floor = ceiling.cpu_us + engine.per_row[batch]
        lines.append(
            f"| {ceiling.concurrency} | {ceiling.cpu_us:.0f} | {engine.per_row[batch]:.1f} ({batch}) | "
            f"{floor:.0f} | {CPU_TARGET_US:g} | {CPU_TARGET_US - floor:.0f} |"
        )
    costs = ", ".join(f"{engine.per_row[size]:.1f} µs a row in a batch of {size}" for size in ENGINE_BATCHES)
    table = "\n".join(lines)
    return f"""## The floor on this machine

The engine alone ({engine.name}, in the benchmark process, warm caches) costs {costs}.
A request that did only what the ceiling app does (HTTP, JSON in, an answer out) plus its row
of the largest batch its clients can make would cost the floor below; what is left of the CPU
target must pay for checking the row, batching, the answer, metrics, the drift window and the
feedback memory.

{table}
"""


def formats_section(runs: list[Run], engines: dict[str, str]) -> str:
    """One row per format and concurrency: our server beside the baseline serving the same
    artifact with the format's own library, and beside the ceiling app, from the same run."""
    by = {(r.server, r.format, r.concurrency): r for r in runs}
    lines = [
        "| format | concurrency | baseline (its library) req/s, p99 | serving req/s, p99 | engine | ceiling req/s, p99 "
        "| vs baseline | share of the ceiling |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for fmt in (f for f in FORMATS if (OURS, f, runs[0].concurrency) in by):
        for concurrency in sorted({r.concurrency for r in runs}):
            base, ours = by[(BASELINE, fmt, concurrency)], by[(OURS, fmt, concurrency)]
            ceiling = by[(CEILING, "", concurrency)]
            lines.append(
                f"| {fmt} | {concurrency} | {base.rate:,.0f}, {base.p99_ms:.1f} ms | {ours.rate:,.0f}, "
                f"{ours.p99_ms:.2f} ms | {engines[fmt]} | {ceiling.rate:,.0f}, {ceiling.p99_ms:.2f} ms | "
                f"{ours.rate / base.rate:.1f}× | {ours.rate / ceiling.rate:.0%} |"
            )
    return "\n".join(lines)


def report(
    runs: list[Run],
    args: argparse.Namespace,
    load_before: float,
    cost: OneRow,
    engine: EngineCost,
    *,
    engines: dict[str, str],
) -> str:
    return f"""# Serving benchmark

`python -m bench.serving` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {os.cpu_count()} cores
({platform.processor() or platform.machine()}), Python {platform.python_version()}, wrk with one
thread on the same cores.

Models, one per format, on the same seeded synthetic data (30 features): skops, a
HistGradientBoostingClassifier of 150 trees of 15 leaves (the settings fraud-detection v1.1.0
was trained with); xgboost, 150 trees of depth 4; lightgbm, 150 trees of 15 leaves; onnx, the
HistGradientBoosting converted by skl2onnx. Requests: one-row `/predict` bodies cycling
through 1,024 held-out rows. {args.duration} s per run after a {args.warmup} s warm-up. The servers
stay up and their runs alternate (the ceiling, then each format's baseline and serving, at each
concurrency), so a change in the machine's other load falls on all alike. OMP/OpenBLAS pinned to one thread for every server.
1-minute load average before the run: {load_before:.2f}. "Other load" is the CPU that other
processes used during each run, in cores (the 2 cores are shared with other work). "Errors"
counts every answer that is not a 2xx, plus connection errors and timeouts.

- baseline: the seed's Flask app under gunicorn, 2 sync workers, the format's own library per
  request: scikit-learn's and XGBoost's `predict` + `predict_proba`, a LightGBM Booster's
  `predict`, an onnxruntime session with its defaults (bench/serving/baseline.py).
- serving: `python -m serving`, what `modelctl serve` runs (one process: Starlette on uvicorn
  with uvloop/httptools, orjson, batching, the format's compiled engine, metrics, the drift
  window and the feedback memory on, drift recomputed every 10 s).
- ceiling: a bare ASGI app on the same uvicorn stack (one process) that parses the same JSON body
  and returns a fixed answer: the most a Python server can do here.

## Every format

{formats_section(runs, engines)}

## All runs

{table(runs)}

## The targets (skops)

{verdicts(runs)}

{floor_section(runs, engine)}
{one_row_section(cost)}"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument("--duration", type=int, default=30, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of discarded load before measuring")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md", help="where the report goes")
    parser.add_argument(
        "--servers", nargs="+", choices=[BASELINE, OURS, CEILING], default=[BASELINE, OURS, CEILING],
        help="measure only these (a development run: the report is printed, not written)",
    )  # fmt: skip
    parser.add_argument(
        "--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS),
        help="serve only these formats (a development run without skops: the report is printed, not written)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: run 'make tools' (or apt-get install wrk)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp)
        specs, rows = train(folder)
        cost, engine = one_row_cost(specs[SKOPS], rows[0]), engine_cost(specs[SKOPS], rows)
        bodies = folder / "bodies.jsonl"
        bodies.write_bytes(
            b"\n".join(orjson.dumps({"features": row.tolist()}) for row in rows[:1024]) + b"\n"
        )
        with ExitStack() as stack:
            servers = [
                stack.enter_context(running(name, fmt, command, args, folder))
                for fmt, spec in [("", None), *((f, specs[f]) for f in args.formats)]
                for name, command in commands(spec).items()
                if name in args.servers
            ]
            engines = {s.format: s.engine() for s in servers if s.name == OURS}
            # All run all along (an idle server costs nothing), and their runs alternate, so a
            # change in the machine's other load falls on all alike.
            runs = [measure(s.name, s.format, s.pid, s.load, c) for c in args.concurrency for s in servers]
    order = [BASELINE, OURS, CEILING]
    formats = ["", *FORMATS]
    runs.sort(key=lambda run: (formats.index(run.format), order.index(run.server), run.concurrency))
    if set(args.servers) != set(order) or SKOPS not in args.formats:  # a development run: the table only
        print(table(runs))
        return 1 if any(run.errors for run in runs) else 0
    text = report(runs, args, load_before, cost, engine, engines=engines)
    print(text)
    args.output.write_text(text, encoding="utf-8")
    return 1 if any(run.errors for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
