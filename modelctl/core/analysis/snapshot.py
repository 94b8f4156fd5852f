"""The canary snapshot: the judge's whole input, its JSON form, and how it is built from window counts.

A snapshot holds both arms' cumulative counts over one window (requests, errors, the latency and
score histograms, the feedback labels) with the analysis settings; its JSON Schema is committed as
`analysis/snapshot.schema.json` (`snapshot_schema`). `build_snapshot` makes one from the window
counts `modelctl.core.analysis.window` reads; an A/B experiment's snapshot holds one for its
guardrails. Every analysis stores its input through `digest` (a decision names its snapshot by
it) and its output through `finite` (JSON has no NaN).

Two formats. Format 1 (no `format` key) counts everything at the model servers and ignores
analysis.interval. Format 2 (`format: 2`) says when the current step began (`step_started`: the
judge holds a step younger than its interval) and what the counts could not see (`notes`); with
`sources` it takes an arm's requests, errors and latency from the mesh, what callers got
(`contract.MESH_SOURCES`: a request that never reached a server is counted, and fails), keeps
what only the servers know (scores, feedback labels) from them, records the servers' own counts
beside the mesh's (`Arm.server`), and names the source of each count. A format-1 snapshot reads,
dumps and digests exactly as it was written, so its decision replays unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from modelctl.core import contract, releases
from modelctl.core.analysis.window import Sample, by_version, histograms
from modelctl.core.errors import UserError, collect
from modelctl.core.schema import Analysis, ModelName, Release, Strict, VersionName
from modelctl.core.state import pydantic_errors

Floats = npt.NDArray[np.float64]

# A bucket bound: a number, the last one "+Inf" as Prometheus writes it.
Bound = Annotated[float, WithJsonSchema({"anyOf": [{"type": "number"}, {"const": "+Inf"}]})]


class Histogram(Strict):
    """A Prometheus histogram: cumulative counts per upper bound `le`, the last bound +Inf."""

    le: list[Bound] = Field(min_length=1)
    counts: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]

    @field_validator("le")
    @classmethod
    def _bounds(cls, le: list[float]) -> list[float]:
        if any(math.isnan(b) for b in le) or le[-1] != math.inf:
            raise ValueError('the last bucket bound must be +Inf and none NaN; end le with "+Inf"')
        if any(b <= a for a, b in itertools.pairwise(le)):
            raise ValueError("bucket bounds must increase; list le smallest first")
        return le

    @model_validator(mode="after")
    def _cumulative(self) -> Histogram:
        if len(self.counts) != len(self.le):
            raise ValueError(f"{len(self.counts)} counts for {len(self.le)} bounds; give one count per bound")
        if any(b < a * (1 - 1e-9) - 1e-9 for a, b in zip(self.counts, self.counts[1:], strict=False)):
            raise ValueError("bucket counts decrease; give cumulative counts as Prometheus exposes them")
        return self

    @field_serializer("le")
    def _json_bounds(self, le: list[float]) -> list[float | str]:
        # JSON has no infinity: the last bound is written as Prometheus writes it.
        return [b if math.isfinite(b) else "+Inf" for b in le]

    def cumulative(self) -> Floats:
        return np.maximum.accumulate(np.asarray(self.counts, dtype=np.float64))


class Feedback(Strict):
    """Ground-truth labels received for one arm's predictions: count per (actual, predicted)."""

    actual: Annotated[str, Field(min_length=1)]
    predicted: Annotated[str, Field(min_length=1)]
    count: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Served(Strict):
    """What one arm's servers counted themselves: the requests that reached them, their 5xx
    answers, and their latency histogram (format 2 keeps them beside the mesh's counts)."""

    requests: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    errors: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    latency_seconds: Histogram


# Where a count came from: the model servers' metrics, or a mesh of `contract.MESH_SOURCES`.
SourceName = Literal["server", "istio", "envoy"]
# Keys format 2 added: left out of the JSON (and digest) when unset (`server`, `sources`) or
# in a format-1 snapshot (`format`, `step_started`, `notes`), so format 1 is written as it was.
UNSET_FORMAT_2_KEYS = frozenset({"sources", "server"})
FORMAT_2_KEYS = ("format", "step_started", "notes")


def _without_unset_format_2(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in UNSET_FORMAT_2_KEYS or v is not None}


class Arm(Strict):
    """One version's cumulative counts since the canary step began (`server`: format 2's
    servers' own counts, when `requests`, `errors` and `latency_seconds` are the mesh's)."""

    version: VersionName
    weight: Annotated[float, Field(ge=0, le=100)]
    requests: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    errors: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    latency_seconds: Histogram
    score: Histogram | None = None
    feedback: list[Feedback] = Field(default_factory=list)
    server: Served | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_unset_format_2(handler(self))

    @model_validator(mode="after")
    def _errors_are_requests(self) -> Arm:
        if self.errors > self.requests:
            raise ValueError(
                f"errors ({self.errors:g}) exceed requests ({self.requests:g}); check the counters"
            )
        return self

    def labels(self) -> tuple[float, float]:
        """(labelled predictions, wrong ones) from the feedback counts."""
        labelled = sum(f.count for f in self.feedback)
        return labelled, sum(f.count for f in self.feedback if f.actual != f.predicted)


class Source(Strict):
    """Where the counts came from: the Prometheus queried and the PromQL run, by name."""

    prometheus: str
    queries: dict[str, str]


# The snapshot format `build_snapshot` writes. 1 (no `format` key, every snapshot committed
# before it): the judge ignores analysis.interval. 2: the judge holds a step younger than its
# interval (from `step_started`), and the snapshot carries `notes` on how its counts were read.
SNAPSHOT_FORMAT = 2


class Snapshot(Strict):
    """The judge's whole input: both arms' counts over one window, and the analysis settings.

    `window_start` is when the counts begin (the current step's commit); `step_started` when
    the step began by its commit's date (format 2; the same instant, except for a commit dated
    after `taken_at`, whose window starts at the change before it); `canary_started` when the
    canary first took traffic (for `max_duration`); `notes` what the counts could not see (a
    series without a value at the window's start, a commit dated ahead); `sources` (format 2)
    where each arm field's counts came from, when requests, errors and latency are the mesh's
    (see the module docstring). The JSON Schema of this format is
    `analysis/snapshot.schema.json`.
    """

    format: Literal[1, 2] = 1
    sources: dict[str, SourceName] | None = None
    model: ModelName
    stack: Annotated[str, Field(min_length=1)]
    taken_at: datetime
    window_start: datetime | None = None
    step_started: datetime | None = None
    canary_started: datetime | None = None
    baseline: Arm
    canary: Arm
    analysis: Analysis
    source: Source | None = None
    notes: list[str] = Field(default_factory=list)

    @property
    def mesh(self) -> str | None:
        """The mesh the requests, errors and latency were counted at (format 2), else None."""
        return None if self.sources is None else self.sources.get("requests")

    @field_validator("taken_at", "window_start", "step_started", "canary_started")
    @classmethod
    def _aware(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{info.field_name} has no time zone; write it in UTC like 2026-01-31T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _comparable(self) -> Snapshot:
        if self.sources is not None and self.format != 2:
            raise ValueError(
                'sources are named by format 2 snapshots only; write "format": 2 or drop sources'
            )
        if self.canary.version == self.baseline.version:
            raise ValueError(f"canary and baseline are both {self.canary.version}; compare two versions")
        if self.canary.latency_seconds.le != self.baseline.latency_seconds.le:
            raise ValueError("the arms' latency buckets differ; collect both with the same bounds")
        scores = (self.canary.score, self.baseline.score)
        if all(scores) and self.canary.score.le != self.baseline.score.le:  # type: ignore[union-attr]
            raise ValueError("the arms' score buckets differ; collect both with the same bounds")
        return self

    @model_serializer(mode="wrap")
    def _as_written(self, write: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A format 1 snapshot is written (and digested) as it was: without format 2's keys.
        data: dict[str, Any] = _without_unset_format_2(write(self))
        if self.format == 1:
            for key in FORMAT_2_KEYS:
                data.pop(key, None)
        return data

    def window_seconds(self) -> float | None:
        if self.window_start is None:
            return None
        return (self.taken_at - self.window_start).total_seconds()

    def step_seconds(self) -> float | None:
        """How long the current step has run when the snapshot was taken (format 2), else None."""
        started = self.step_started or self.window_start
        if self.format < 2 or started is None:
            return None
        return (self.taken_at - started).total_seconds()


def snapshot_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the snapshot, as committed in analysis/snapshot.schema.json."""
    schema = Snapshot.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def parse_snapshot(data: Any, source: str = "snapshot") -> Snapshot:
    """Validate a snapshot; every problem becomes a one-line UserError naming `source`.

    Raises
    ------
    UserError, UserErrors
        One line per problem, naming the key.
    """
    if not isinstance(data, dict):
        raise UserError(source, "the snapshot is not a JSON object", "write the collector's snapshot object")
    try:
        return Snapshot.model_validate(data)
    except ValidationError as exc:
        collect(pydantic_errors(exc, source, data))
        raise  # unreachable: collect raises for a non-empty list


def digest(snapshot: BaseModel) -> str:
    """sha256 of a snapshot's canonical JSON (sorted keys), to match decisions with snapshots."""
    canonical = orjson.dumps(snapshot.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def finite(value: Any) -> Any:
    """`value` (nested dicts, lists and tuples) with null for every NaN or infinity: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


# ---------------------------------------------------------------- from the window's counts


@dataclass(frozen=True)
class Arms:
    """The two versions compared and their configured weights (percent)."""

    baseline: str
    canary: str
    baseline_weight: int
    canary_weight: int


def canary_arms(release: Release) -> Arms | None:
    """The baseline and canary of a release in a canary state (`releases.canary_split`: the
    baseline is the version the release started from, as recorded), else None."""
    roles = releases.canary_split(release)
    if roles is None:
        return None
    stable, canary = roles
    return Arms(stable, canary, release.traffic[stable], release.traffic[canary])


@dataclass(frozen=True)
class Mesh:
    """Where an analysis reads what callers got: a mesh of `contract.MESH_SOURCES` and the
    namespace its series name (`MeshSource.version_value`)."""

    source: contract.MeshSource
    namespace: str

    def queries(self) -> tuple[str, ...]:
        """The window counts (keys of `contract.WINDOW_COUNTS`) of this mesh a snapshot reads."""
        name = self.source.name
        return tuple(contract.mesh_count(name, what) for what in ("requests", "errors", "latency_buckets"))


def build_snapshot(
    *,
    model: str,
    stack: str,
    arms: Arms,
    analysis: Analysis,
    taken_at: datetime,
    window_start: datetime,
    canary_started: datetime | None,
    answers: Mapping[str, Sequence[Sample]],
    source: Mapping[str, Any],
    step_started: datetime | None = None,
    notes: Sequence[str] = (),
    mesh: Mesh | None = None,
) -> Snapshot:
    """The judge's snapshot (format `SNAPSHOT_FORMAT`) from the window counts `answers` (name ->
    samples), with requests, errors and latency from `mesh` (and the servers' own beside them)
    when given and Prometheus holds any of its request series of the model, else counted at
    the servers with a note saying so; `step_started` defaults to `window_start`.

    Raises
    ------
    UserError, UserErrors
        The counts do not make a valid snapshot (one line per problem).
    """
    requests = by_version(answers.get("requests_in_window", ()))
    errors = by_version(answers.get("server_errors_in_window", ()))
    latency = histograms(answers.get("latency_buckets_in_window", ()))
    scores = histograms(answers.get("score_buckets_in_window", ()))

    def served(version: str) -> dict[str, Any]:
        total = requests.get(version, 0.0)
        return {
            "requests": total,
            "errors": min(errors.get(version, 0.0), total),
            "latency_seconds": _histogram(latency, version),
        }

    if mesh is not None and not answers.get(mesh.queries()[0]):
        # Not one series: Prometheus does not hold the mesh's metrics (not scraped, or another
        # mesh). Judging on nothing would hold forever; the servers' counts are said to be used.
        notes = [*notes, _no_mesh_note(mesh, model)]
        mesh = None
    called = _called(model, mesh, answers) if mesh else served

    def arm(version: str, weight: int) -> dict[str, Any]:
        return {
            "version": version,
            "weight": weight,
            **called(version),
            "score": _histogram(scores, version) if scores else None,
            "feedback": _feedback(answers.get("feedback_in_window", ()), version),
            **({"server": served(version)} if mesh else {}),
        }

    data = {
        "format": SNAPSHOT_FORMAT,
        **({"sources": _sources(mesh.source.name)} if mesh else {}),
        "model": model,
        "stack": stack,
        "taken_at": taken_at.isoformat(),
        "window_start": window_start.isoformat(),
        "step_started": (step_started or window_start).isoformat(),
        "canary_started": canary_started.isoformat() if canary_started else None,
        "baseline": arm(arms.baseline, arms.baseline_weight),
        "canary": arm(arms.canary, arms.canary_weight),
        "analysis": analysis.model_dump(mode="json"),
        "source": dict(source),
        "notes": list(notes),
    }
    return parse_snapshot(data, f"analysis of {model} on {stack}")


def _no_mesh_note(mesh: Mesh, model: str) -> str:
    return (
        f"the mesh ({mesh.source.name}) has no request series of {model} in Prometheus: requests, "
        "errors and latency are the servers' own counts, which miss a request that never reached "
        "a server; check that Prometheus scrapes the mesh's metrics and that "
        "modelctl:environment.monitoring.mesh names the mesh"
    )


def _sources(mesh: str) -> dict[str, str]:
    called = dict.fromkeys(("requests", "errors", "latency_seconds"), mesh)
    return {**called, **dict.fromkeys(("score", "feedback", "server"), "server")}


def _called(
    model: str, mesh: Mesh, answers: Mapping[str, Sequence[Sample]]
) -> Callable[[str], dict[str, Any]]:
    """An arm's requests, errors and latency as the mesh counted them, by version."""
    requests_name, errors_name, latency_name = mesh.queries()
    requests = by_version(answers.get(requests_name, ()))
    errors = by_version(answers.get(errors_name, ()))
    unit = mesh.source.seconds_per_unit
    latency = {
        key: {bound * unit: count for bound, count in per.items()}
        for key, per in histograms(answers.get(latency_name, ())).items()
    }

    def called(version: str) -> dict[str, Any]:
        key = mesh.source.version_value(mesh.namespace, model, version)
        total = requests.get(key, 0.0)
        return {
            "requests": total,
            "errors": min(errors.get(key, 0.0), total),
            "latency_seconds": _histogram(latency, key),
        }

    return called


def _histogram(buckets: Mapping[str, Mapping[float, float]], version: str) -> dict[str, Any]:
    """Both arms on the same bounds (the union); counts made cumulative again."""
    bounds = sorted({b for per in buckets.values() for b in per} | {math.inf})
    counts, running = [], 0.0
    for bound in bounds:
        running = max(running, buckets.get(version, {}).get(bound, 0.0))
        counts.append(running)
    return {"le": [b if math.isfinite(b) else "+Inf" for b in bounds], "counts": counts}


def _feedback(samples: Sequence[Sample], version: str) -> list[dict[str, Any]]:
    actual, predicted = contract.FEEDBACK.labels
    return [
        {"actual": labels[actual], "predicted": labels[predicted], "count": value}
        for labels, value in samples
        if labels.get("version") == version
        and labels.get(actual)
        and labels.get(predicted)
        and math.isfinite(value)
        and value > 0
    ]
