"""`shadow report`, and the report a canary commits as its evidence.

The comparison is `modelctl.core.analysis.shadow`'s; this module reads its input: the counters
from Prometheus over the window since the shadow began, and the prediction logs (given, or a
local stack's servers' own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from modelctl.api.analysis import Scope, choose, read_counts
from modelctl.api.local import local_server_logs
from modelctl.core.analysis import shadow
from modelctl.core.analysis.shadow import Logged, ShadowReport, parse_log
from modelctl.core.errors import UserError
from modelctl.core.releases import Proposal
from modelctl.core.schema import Release

# The trailer of a canary's commit naming the shadow report committed with it.
SHADOW_REPORT_TRAILER = "Shadow-Report"


@dataclass(frozen=True)
class ShadowResult:
    """One shadow report with where it came from: the window, Prometheus and its queries, the logs."""

    stack: str
    window_start: datetime
    taken_at: datetime
    report: ShadowReport
    source: dict[str, object]

    def to_json(self) -> dict[str, object]:
        return {
            "stack": self.stack,
            "window_start": self.window_start.isoformat(),
            "taken_at": self.taken_at.isoformat(),
            **self.report.to_json(),
            "source": self.source,
        }


def shadow_report(
    root: Path,
    *,
    stack: str,
    model: str | None = None,
    prometheus: str | None = None,
    prediction_logs: list[Path] | None = None,
    window: float | None = None,
    now: datetime | None = None,
) -> list[ShadowResult]:
    """How each shadow on `stack` (or only `model`'s) predicts compared with the versions it mirrors.

    The window starts when the release began mirroring its current shadow version (from git),
    or `window` seconds before `now`. Counters come from Prometheus (see `canary_analyze` for
    the default URL); the prediction log from `prediction_logs` (JSON-lines files such as
    `kubectl logs` of the model's pods), else, for a stack running on this machine, the
    servers' own logs.

    Raises
    ------
    UserError
        No Prometheus URL, Prometheus failing, an unreadable log, or `model` has no shadow.
    """
    scope = choose(
        root,
        stack,
        model,
        lambda release: release.shadow,
        _shadow_run,
        problem=f"mirrors no version on {stack}",
        fix=f"start one with 'modelctl shadow {model} VERSION --percent 100 --stack {stack}'",
        url=prometheus,
        now=now,
        history=window is None,
    )
    return [_shadow_report(scope, name, window, prediction_logs) for name in scope.names]


def _shadow_run(release: Release) -> Callable[[Release | None], bool]:
    """A shadow's run: the states mirroring the same version."""
    mirrored = release.shadow.version if release.shadow else None
    return lambda past: past is not None and past.shadow is not None and past.shadow.version == mirrored


def _shadow_report(
    scope: Scope, model: str, window: float | None, prediction_logs: list[Path] | None
) -> ShadowResult:
    release = scope.release(model)
    assert release.shadow is not None  # shadow_report chose only shadowed releases
    mirrored = release.shadow.version
    taken_at = scope.taken_at
    if window is None:
        began = scope.began(model)
        window_start = scope.counted_from(model, began)[0] if began else taken_at - timedelta(hours=1)
    else:
        window_start = taken_at - timedelta(seconds=window)
    seconds = (taken_at - window_start).total_seconds()
    queries = shadow.queries(model, seconds, scope.bound)
    answers = read_counts(scope.url, queries, taken_at, seconds).counts
    primary = [v for v in release.serving() if v != mirrored]
    files = (
        prediction_logs if prediction_logs is not None else local_server_logs(scope.root, scope.stack, model)
    )
    logged = _read_logs(files, model, window_start) if files else None
    output = scope.state.model(model).output
    report = shadow.compare(
        model,
        shadow.side(answers, primary),
        shadow.side(answers, [mirrored]),
        class_names=output.classes,
        positive_class=output.positive_class,
        percent=release.shadow.percent,
        logged=logged,
    )
    source: dict[str, object] = {
        "prometheus": scope.url,
        "queries": queries,
        "prediction_logs": [str(f) for f in files],
    }
    return ShadowResult(scope.stack, window_start, taken_at, report, source)


def _read_logs(files: list[Path], model: str, since: datetime) -> list[Logged]:
    records: list[Logged] = []
    for path in files:
        try:
            with path.open("rb") as lines:
                records += parse_log(lines, model, since=since)
        except OSError as exc:
            raise UserError(
                str(path), f"cannot read the prediction log ({exc.strerror})", "check the path"
            ) from None
    return records


def shadow_evidence(
    path: Path, model: str, version: str, stack: str
) -> tuple[dict[str, str], Callable[[Proposal], str]]:
    """The shadow report at `path` (`modelctl shadow report --json`) as the file a canary of
    `version` commits under analysis/<stack>/<model>/, and the commit message citing it.

    Raises
    ------
    UserError
        The file is unreadable, or holds no report of `model` shadowing `version` on `stack`.
    """
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UserError(
            str(path),
            f"cannot read the shadow report ({exc})",
            "pass the file 'modelctl shadow report --json' wrote",
        ) from None
    # The command's output holds one report per shadowed model; a single report is taken as is.
    found = data.get("reports", [data]) if isinstance(data, dict) else []
    report = next((r for r in found if isinstance(r, dict) and r.get("model") == model), None)
    if report is None or report.get("shadow") != version or report.get("stack") != stack:
        raise UserError(
            str(path),
            f"is not a shadow report of {model} {version} on {stack}",
            f"run 'modelctl shadow report --stack {stack} --model {model} --json' while {version} is the shadow",
        )
    taken = datetime.fromisoformat(str(report["taken_at"])).astimezone(UTC)
    stored = f"analysis/{stack}/{model}/shadow-{version}-{taken:%Y%m%dT%H%M%SZ}.json"
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
    return {stored: text}, lambda proposal: f"{proposal.message}\n\n{SHADOW_REPORT_TRAILER}: {stored}\n"
