"""Alert rules: the PrometheusRule of each model (built-in alerts, canary comparison, owner alerts).

What callers got is read at the mesh (`ModelTarget.mesh`: Istio's standard metrics at the
callers' proxies, or Envoy's cluster statistics): a request that never reached a server (refused,
reset, timed out, no ready endpoint) is counted there and nowhere else, and a mirror's copies are
not (Istio's reporter="source" never counts them, istio/istio#23496; Envoy's shadow cluster is
left out). A new alert goes here; where alerts are delivered (Alertmanager routing) is
`infra/alertmanager.py`."""

from __future__ import annotations

from infra.common import ModelTarget, Obj, metadata
from modelctl.core.analysis.margins import error_margin_promql, latency_ratio
from modelctl.core.contract import (
    FEEDBACK_WINDOW,
    LABEL_COVERAGE,
    LIVE_QUALITY,
    LIVE_QUALITY_ALIASES,
    query,
    selector,
)
from modelctl.core.schema import ThresholdAlert

RUNBOOKS = "infra/runbooks.md"
ERROR_RATIO = 0.05
P99_SECONDS = 0.5
# The family-wise (Holm) p-value below which a feature's drift alerts: a window of undrifted
# traffic crosses it with probability at most 0.1%, whatever its size.
DRIFT_P_VALUE = 0.001
OOD_RATIO = 0.05
WINDOW = "5m"
CANARY_WINDOW = "10m"
# A version failing its callers, or with no scrapeable pod, is paged fast: a canary takes real
# traffic, and a dead one fails every request it is sent.
MESH_WINDOW = "1m"
MESH_FOR = "1m"
# Owner alerts compare one value per version; several pods of a version report their own gauge.
AGGREGATION = "avg"


def prometheus_rule(target: ModelTarget) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata(target.name, target.namespace, target.labels()),
        "spec": {
            "groups": [
                {"name": f"modelctl.{target.name}", "rules": alert_rules(target)},
                {"name": f"modelctl.{target.name}.feedback", "rules": feedback_recording_rules(target)},
            ]
        },
    }


def feedback_recording_rules(target: ModelTarget) -> list[Obj]:
    """Live quality from the feedback confusion counter, recorded per version across replicas (the
    class names are the model's, so dashboards and alerts read them without knowing the classes),
    and the label coverage: labels per prediction."""
    quality = [{"record": LIVE_QUALITY[name], "expr": _feedback_ratio(target, name)} for name in LIVE_QUALITY]
    return [*quality, {"record": LABEL_COVERAGE, "expr": _label_coverage(target)}]


def _label_coverage(target: ModelTarget) -> str:
    """Labels counted per row predicted, per version, over FEEDBACK_WINDOW (a label counts on the
    version that predicted it, whichever replica took it)."""
    by = "namespace, model, version"
    labels = f"sum by ({by}) ({query('feedback_rate', _matchers(target), window=FEEDBACK_WINDOW)})"
    return f"{labels}\n/ {query('prediction_rate', _matchers(target), by, FEEDBACK_WINDOW)}"


def _feedback_ratio(target: ModelTarget, name: str) -> str:
    """Accuracy, or the positive class's precision or recall, from model_feedback_total{actual,
    predicted} summed over replicas per version over FEEDBACK_WINDOW. No label in the window
    gives no value (0/0), so an alert on it stays quiet."""
    positive = target.model.output.positive_class

    def total(*cells: dict[str, str]) -> str:
        rates = "\n  or ".join(
            query("feedback_rate", _matchers(target, **cell), window=FEEDBACK_WINDOW) for cell in cells
        )
        return f"sum by (namespace, model, version) ({rates})"

    correct = total(*({"actual": c, "predicted": c} for c in target.model.output.classes))
    true_positive = total({"actual": positive, "predicted": positive})
    ratios = {
        "accuracy": (correct, total({})),
        "precision": (true_positive, total({"predicted": positive})),
        "recall": (true_positive, total({"actual": positive})),
    }
    numerator, denominator = ratios[name]
    return f"{numerator}\n/ {denominator}"


def alert_rules(target: ModelTarget) -> list[Obj]:
    rules = [
        _error_rate(target),
        _p99_latency(target),
        _drift(target),
        _out_of_distribution(target),
        _no_traffic(target),
        *(_mesh_errors(target, version) for version in target.release.serving()),
        *(_unavailable(target, version) for version in target.release.deployed()),
        *_live_quality(target),
        *(_canary_worse(target, canary) for canary in target.canaries()),
    ]
    return rules + [_owner_alert(target, alert) for alert in target.model.alerts]


def _alert(
    target: ModelTarget,
    name: str,
    expr: str,
    *,
    for_: str,
    severity: str,
    summary: str,
    description: str,
    runbook: str = "",
    **labels: str,
) -> Obj:
    # The namespace label is what an AlertmanagerConfig in this namespace routes on.
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, "namespace": target.namespace, **labels},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{RUNBOOKS}#{runbook or name.lower()}",
        },
    }


def _matchers(target: ModelTarget, **extra: str) -> dict[str, str]:
    return {"namespace": target.namespace, "model": target.name, **extra}


def _error_ratio(target: ModelTarget, by: str, window: str, **extra: str) -> str:
    """5xx share of requests; 0 rather than no data when there were requests but no 5xx at all."""
    requests = query("request_rate", _matchers(target, **extra), by, window)
    errors = query("server_error_rate", _matchers(target, **extra), by, window)
    return f"(({errors}) or (0 * {requests}))\n  / {requests}"


def _p99(target: ModelTarget, by: str, window: str, **extra: str) -> str:
    return f"histogram_quantile(0.99, {query('latency_buckets', _matchers(target, **extra), by, window)})"


def _error_rate(target: ModelTarget) -> Obj:
    return _alert(
        target,
        "ModelHighErrorRate",
        f"{_error_ratio(target, 'model, version', WINDOW)}\n> {ERROR_RATIO:g}",
        for_="5m",
        severity="critical",
        summary="{{ $labels.model }} {{ $labels.version }} fails {{ $value | humanizePercentage }} of requests",
        description=f"More than {ERROR_RATIO:.0%} of requests answered 5xx over {WINDOW}.",
    )


def _p99_latency(target: ModelTarget) -> Obj:
    return _alert(
        target,
        "ModelHighLatencyP99",
        f"{_p99(target, 'model, version', WINDOW)}\n> {P99_SECONDS:g}",
        for_="10m",
        severity="warning",
        summary="{{ $labels.model }} {{ $labels.version }} p99 latency is {{ $value | humanizeDuration }}",
        description=f"The 99th percentile of prediction time is above {P99_SECONDS:g}s.",
    )


def _drift(target: ModelTarget) -> Obj:
    return _alert(
        target,
        "ModelFeatureDrift",
        f"{query('feature_drift', _matchers(target), 'model, version, feature')}\n< {DRIFT_P_VALUE:g}",
        for_="15m",
        severity="warning",
        summary="{{ $labels.model }} {{ $labels.version }} input feature {{ $labels.feature }} drifted",
        description="The drift test of the feature against the reference profile has a Holm-adjusted "
        f"p-value of {{{{ $value }}}} over the server's window (below {DRIFT_P_VALUE:g}).",
    )


def _out_of_distribution(target: ModelTarget) -> Obj:
    ood = query("out_of_distribution_rate", _matchers(target), "model, version, feature", WINDOW)
    predictions = query("prediction_rate", _matchers(target), "model, version", WINDOW)
    return _alert(
        target,
        "ModelOutOfDistribution",
        f"{ood}\n  / on (model, version) group_left\n{predictions}\n> {OOD_RATIO:g}",
        for_="10m",
        severity="warning",
        summary="{{ $labels.model }} {{ $labels.version }} sees {{ $value | humanizePercentage }} of "
        "{{ $labels.feature }} values out of range",
        description=f"More than {OOD_RATIO:.0%} of predictions had this feature outside the signature's "
        "or the reference profile's range (the rows are predicted and flagged).",
    )


def _mesh_selector(target: ModelTarget, *extra: str, **matchers: str) -> str:
    exact, raw = target.mesh.selection(target.namespace, target.name)
    return selector({**exact, **matchers}, *raw, *extra)


def _no_traffic(target: ModelTarget) -> Obj:
    mesh = target.mesh
    shadow = target.release.shadow
    mirrored = (
        [f'{mesh.version}!="{mesh.version_value(target.namespace, target.name, shadow.version)}"']
        if shadow is not None and shadow.version not in target.release.serving()
        else []
    )
    requests = f"{mesh.requests}{_mesh_selector(target, mesh.answered, *mirrored)}"
    return _alert(
        target,
        "ModelNoTraffic",
        # `or vector(0)`: none of the series at all is no traffic too (absent() would add the
        # selector's matchers to the alert's labels).
        f"(sum(rate({requests}[10m])) or vector(0)) == 0",
        for_="15m",
        severity="warning",
        summary=f"{target.name} receives no requests",
        description=f"The callers' proxies ({mesh.name}) sent no request to any version for 25 minutes "
        "(a shadow's mirrored copies do not count); check the routes and the clients.",
        model=target.name,
    )


def _mesh_errors(target: ModelTarget, version: str) -> Obj:
    """A version failing its callers: 5xx at the mesh, the mesh's own 503 and 504 included."""
    mesh = target.mesh
    matchers = mesh.matchers(target.namespace, target.name, version)
    requests = f"sum(rate({mesh.requests}{_mesh_selector(target, mesh.answered, **matchers)}[{MESH_WINDOW}]))"
    errors = f"sum(rate({mesh.requests}{_mesh_selector(target, mesh.errors, **matchers)}[{MESH_WINDOW}]))"
    return _alert(
        target,
        "ModelVersionFailingCallers",
        f"(({errors}) or (0 * {requests}))\n  / {requests}\n> {ERROR_RATIO:g}",
        for_=MESH_FOR,
        severity="critical",
        summary=f"{target.name} {version} fails {{{{ $value | humanizePercentage }}}} of its callers' requests",
        description=f"More than {ERROR_RATIO:.0%} of the requests routed to {version} over {MESH_WINDOW} "
        f"failed as its callers saw them ({mesh.name}: answered 5xx, refused, reset or timed out); "
        f"'modelctl rollback {target.name} --stack {target.stack.name}' moves its traffic back.",
        model=target.name,
        version=version,
    )


def _unavailable(target: ModelTarget, version: str) -> Obj:
    """No scrapeable pod of a deployed version: every target down, or none at all."""
    # Pods are named after their Deployment: <deployment>-<replica set>-<pod> in a cluster.
    pods = f'pod=~"{target.versioned_name(version)}-[^-]+(-[^-]+)?"'
    up = f"up{selector({'namespace': target.namespace, 'job': target.name}, pods)}"
    return _alert(
        target,
        "ModelVersionUnavailable",
        f"(max({up}) or vector(0)) == 0",
        for_=MESH_FOR,
        severity="critical",
        summary=f"{target.name} {version} has no pod up",
        description=f"Prometheus scrapes no pod of {target.name} {version}: no ready endpoint serves "
        "its traffic (crashing, killed, or not scheduled); check 'kubectl get pods' and its logs.",
        model=target.name,
        version=version,
    )


def _live_quality(target: ModelTarget) -> list[Obj]:
    """Live quality (from ground-truth feedback) below the promotion gate the version passed."""
    return [
        _alert(
            target,
            f"ModelLive{metric.capitalize()}BelowGate",
            f"{_gauge(target, 'min', recorded)}\n< {target.model.gates[metric]:g}",
            for_="15m",
            severity="critical",
            summary=f"{{{{ $labels.model }}}} {{{{ $labels.version }}}} live {metric} is {{{{ $value }}}}",
            description=f"Live {metric} from feedback over {FEEDBACK_WINDOW}, across replicas, is below the "
            f"promotion gate {target.model.gates[metric]:g}.",
        )
        for metric, recorded in LIVE_QUALITY.items()
        if metric in target.model.gates
    ]


def _canary_worse(target: ModelTarget, canary: str) -> Obj:
    stable = target.stable()
    analysis = target.release.analysis
    canary_version = {"version": canary}
    stable_version = {"version": stable}
    stable_errors = _error_ratio(target, "model", CANARY_WINDOW, **stable_version)
    errors = (
        f"({_error_ratio(target, 'model', CANARY_WINDOW, **canary_version)})\n"
        f"- on (model)\n({stable_errors})\n"
        f"> on (model)\n{error_margin_promql(analysis, stable_errors)}"
    )
    latency = (
        f"{_p99(target, 'model', CANARY_WINDOW, **canary_version)}\n"
        f"/ on (model)\n{_p99(target, 'model', CANARY_WINDOW, **stable_version)}\n"
        f"> {latency_ratio(analysis):g}"
    )
    return _alert(
        target,
        "ModelCanaryWorseThanStable",
        f"(\n{errors}\n)\nor\n(\n{latency}\n)",
        for_=CANARY_WINDOW,
        severity="warning",
        summary=f"{target.name} canary {canary} is worse than stable {stable}",
        description=f"Its error ratio exceeds the stable one by more than the larger of {analysis.error_margin:g} "
        f"and {analysis.error_margin_relative:.0%} of the stable ratio, or its p99 "
        f"latency by more than {analysis.latency_margin:.0%}; consider 'modelctl rollback'.",
        version=canary,
    )


def _owner_alert(target: ModelTarget, alert: ThresholdAlert) -> Obj:
    # model_accuracy, _precision and _recall name the live quality recorded from the feedback counters.
    recorded = LIVE_QUALITY_ALIASES.get(alert.metric)
    value = _gauge(target, "min", recorded) if recorded else _gauge(target, AGGREGATION, alert.metric)
    condition = f"{alert.metric} {alert.operator} {alert.threshold:g}"
    return _alert(
        target,
        alert.name,
        f"{value}\n{alert.operator} {alert.threshold:g}",
        for_=alert.for_,
        severity=alert.severity,
        summary=f"{{{{ $labels.model }}}} {{{{ $labels.version }}}}: {condition}",
        description=alert.description
        or f"{condition} for {alert.for_} (alert set by the model owner in model.yaml).",
        runbook="owner-alerts",
    )


def _gauge(target: ModelTarget, aggregation: str, metric: str) -> str:
    return query("gauge", _matchers(target), "model, version", aggregation=aggregation, metric=metric)
