"""Every name two shells must agree on, defined once: the server, the cluster objects, the alert
rules, the dashboard and the policies import them from here, so renaming one is one edit and an
import error, never a silently empty alert.

- Kubernetes labels and the label selecting a stack's objects (infra writes, policies read).
- The request header that pins a version (infra routes on it, policies check the routes).
- Istio subset naming of a version (infra names subsets, policies map them back).
- The Secret of the alert receivers' credentials and the files Alertmanager reads them from
  (infra renders the paths, a local stack writes the files).
- The server's probe and metrics paths (serving answers, infra probes and scrapes).
- The feedback store and the Secret of the receipt keys (serving reads them, infra declares
  them, a local stack runs and writes them).
- The metrics the server exports, with their label sets (serving registers them), and the
  PromQL built from them as one named table of queries (alert rules, dashboard, canary analysis),
  in the manner of Flagger's per-mesh query table (`pkg/metrics/observers/istio.go`).
- The mesh's own request metrics, what callers got (`MESH_SOURCES`: Istio's standard metrics in
  a cluster, Envoy's cluster statistics on the local stack), and Istio's name of the Envoy
  cluster of a subset (the local data plane names its clusters so, the analysis selects them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

# ---------------------------------------------------------------- Kubernetes and Istio

APP_LABEL = "app"
VERSION_LABEL = "version"
STACK_LABEL = "modelctl.io/stack"
MANAGED_BY = {"app.kubernetes.io/managed-by": "modelctl"}
VERSION_HEADER = "x-model-version"

# The port the server listens on in its container, and the Service's port that maps to it.
HTTP_PORT = 8080
SERVICE_PORT = 80
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"


# The Secret holding the alert receivers' credentials (one key per secret config key), and where
# Alertmanager reads it: the prometheus-operator mounts each Secret named in an Alertmanager's
# `spec.secrets` at /etc/alertmanager/secrets/<name>/<key>; a local stack writes the same files.
ALERTING_SECRET = "modelctl-alerting"
ALERTMANAGER_SECRETS_DIR = "/etc/alertmanager/secrets"


# Feedback: the Redis that remembers which predictions took their label (a StatefulSet and its
# Service per stack), and the Secret holding the receipts' signing keys and the store's password,
# mounted as files in every model pod (the server reads them; a local stack writes the same files).
FEEDBACK_STORE = "modelctl-feedback"
FEEDBACK_STORE_PORT = 6379
FEEDBACK_SECRET = "modelctl-feedback"
FEEDBACK_SECRET_DIR = "/etc/modelctl/feedback"
RECEIPT_KEYS_FILE = "receipt-keys"
STORE_PASSWORD_FILE = "store-password"


def secret_file(key: str) -> str:
    """The file Alertmanager reads the secret config key `key` from (`*_file` fields)."""
    return f"{ALERTMANAGER_SECRETS_DIR}/{ALERTING_SECRET}/{key}"


def subset_name(version: str) -> str:
    """A DNS label for a version (Istio subsets and object names cannot hold dots)."""
    return version.replace(".", "-").lower()


def service_host(model: str, namespace: str) -> str:
    """The cluster-local host of a model's Service (the VirtualService's and DestinationRule's host)."""
    return f"{model}.{namespace}.svc.cluster.local"


def outbound_cluster(port: int, subset: str, host: str) -> str:
    """The Envoy cluster of one subset of a host, as Istio names it: `outbound|<port>|<subset>|<host>`
    (istiod's `model.BuildSubsetKey`; the subset is empty for the host's default cluster)."""
    return f"outbound|{port}|{subset}|{host}"


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """One metric the server exports: its name, type, help text and labels.

    Every series carries `SERVED_BY` (model, version) first, then `labels`.
    """

    name: str
    kind: Literal["counter", "gauge", "histogram", "summary"]
    help: str
    labels: tuple[str, ...] = ()

    @property
    def label_names(self) -> tuple[str, ...]:
        return (*SERVED_BY, *self.labels)


SERVED_BY = ("model", "version")

REQUESTS = Metric("model_requests_total", "counter", "Prediction requests by HTTP status code.", ("code",))
ERRORS = Metric("model_errors_total", "counter", "Refused or failed requests by error type.", ("type",))
PREDICTIONS = Metric("model_predictions_total", "counter", "Rows predicted.")
# Per predicted class, so a shadow's class rates compare with its primary's on the same traffic.
PREDICTED_CLASS = Metric(
    "model_predicted_class_total", "counter", "Rows predicted, by predicted class.", ("class",)
)
DURATION = Metric(
    "model_prediction_duration_seconds",
    "histogram",
    "Time from request received to response ready, for /predict and /v2 infer.",
)
SCORE = Metric("model_prediction_score", "histogram", "Predicted probability of the positive class.")
BATCH_SIZE = Metric("model_batch_size", "histogram", "Rows per model call.")
OUT_OF_DISTRIBUTION = Metric(
    "model_out_of_distribution_total",
    "counter",
    "Predicted rows with this feature outside the signature's or the reference profile's range.",
    ("feature",),
)
# A confusion matrix per version: counters add up across replicas, so PromQL computes accuracy,
# precision and recall over any window (a per-pod gauge over its last N labels cannot be summed).
FEEDBACK = Metric(
    "model_feedback_total",
    "counter",
    "Ground-truth labels received, by actual and predicted class.",
    ("actual", "predicted"),
)
FEEDBACK_VALUE = Metric(
    "model_feedback_value",
    "summary",
    "Business value sent with feedback (revenue, cost), summed per version.",
)
FEATURE_DRIFT = Metric(
    "model_feature_drift_p_value",
    "gauge",
    "P-value of each feature's drift test over the sliding window against the reference profile, "
    "Holm-adjusted across the features (low means drifted; it accounts for the window's size).",
    ("feature",),
)
INFO = Metric("model_info", "gauge", "The served version.", ("sha256",))
ENGINE = Metric(
    "model_engine_info",
    "gauge",
    "The engine that predicts; fallback_from names the compiled engine that failed its parity check.",
    ("engine", "fallback_from"),
)
PARITY_ERROR = Metric(
    "model_engine_parity_error",
    "gauge",
    "Largest probability difference between the engine and the format's own library on the reference rows.",
)
GC_PAUSES = Metric(
    "model_gc_pause_seconds", "histogram", "Garbage-collector pauses by generation.", ("generation",)
)
# Live quality from the feedback counters over FEEDBACK_WINDOW, by the name of the promotion gate
# it is compared with: the series a recording rule per model writes (it knows the class names,
# so the alerts and the dashboard read one series per version without knowing them). Owner
# alerts on `model_<name>` read the same series.
FEEDBACK_WINDOW = "30m"
LIVE_QUALITY = {
    name: f"model_version:feedback_{name}:ratio_rate{FEEDBACK_WINDOW}"
    for name in ("accuracy", "precision", "recall")
}
LIVE_QUALITY_ALIASES = {f"model_{name}": recorded for name, recorded in LIVE_QUALITY.items()}
# Labels received per prediction made over FEEDBACK_WINDOW, per version across replicas (recorded
# beside live quality): with labels that come late, the share of the traffic whose outcome is known.
LABEL_COVERAGE = f"model_version:feedback_coverage:ratio_rate{FEEDBACK_WINDOW}"

# The prediction log's JSON-lines records (the server writes them, `shadow report` reads them):
# one line per predicted row, `score` being the positive class's probability as in SCORE.
PREDICTION_LOG_KEYS = ("time", "request_id", "row", "model", "version", "class", "score")

# ---------------------------------------------------------------- PromQL

# The `code` matcher of server errors (5xx answers).
SERVER_ERRORS = 'code=~"5.."'

# Templates, filled by `query`: {selector} (the matchers given), {server_errors} (the same with
# SERVER_ERRORS), {by} (grouping labels), {window} (a range such as 5m), {aggregation}, {metric}.
QUERIES: dict[str, str] = {
    "request_rate": f"sum by ({{by}}) (rate({REQUESTS.name}{{selector}}[{{window}}]))",
    "server_error_rate": f"sum by ({{by}}) (rate({REQUESTS.name}{{server_errors}}[{{window}}]))",
    "prediction_rate": f"sum by ({{by}}) (rate({PREDICTIONS.name}{{selector}}[{{window}}]))",
    "out_of_distribution_rate": f"sum by ({{by}}) (rate({OUT_OF_DISTRIBUTION.name}{{selector}}[{{window}}]))",
    # One cell of the feedback confusion matrix (the selector names actual and/or predicted).
    "feedback_rate": f"rate({FEEDBACK.name}{{selector}}[{{window}}])",
    "latency_buckets": f"sum by ({{by}}, le) (rate({DURATION.name}_bucket{{selector}}[{{window}}]))",
    # The strongest evidence of drift among a version's pods: the smallest p-value.
    "feature_drift": f"min by ({{by}}) ({FEATURE_DRIFT.name}{{selector}})",
    "requests": f"{REQUESTS.name}{{selector}}",
    "model_names": f"label_values({REQUESTS.name}{{selector}}, model)",
    # A gauge (live quality, or a metric named by a model owner) aggregated per group.
    "gauge": "{aggregation} by ({by}) ({metric}{selector})",
}


# ---------------------------------------------------------------- the mesh: what callers got

# Istio's `reporter`: the caller's proxy ("source") counts every request it sent, including those
# that never reached a pod (connection refused or reset, timeouts, no healthy upstream), and not
# the copies a mirror sends (istio/istio#23496); the destination's proxy counts only arrivals.
REPORTER = "source"
MeshName = Literal["istio", "envoy"]


@dataclass(frozen=True)
class MeshSource:
    """One mesh's request telemetry, what its proxies saw callers get, in the manner of Flagger's
    observers (`pkg/metrics/observers`): a counter of requests by response code, a histogram of
    their durations, and how their series name a model and its versions.

    Attributes
    ----------
    name
        "istio" (Istio's standard metrics, https://istio.io/latest/docs/reference/config/metrics/)
        or "envoy" (Envoy's per-cluster statistics from its Prometheus endpoint, clusters named
        by `outbound_cluster`).
    requests
        The counter of requests, one series per response code.
    code
        Its response-code label.
    duration
        The request-duration histogram (its `_bucket` series), in `seconds_per_unit` units.
    version
        The label whose value names a version (`version_value`).
    """

    name: MeshName
    requests: str
    code: str
    duration: str
    seconds_per_unit: float
    version: str

    def selection(self, namespace: str, model: str) -> tuple[dict[str, str], tuple[str, ...]]:
        """(exact matchers, raw matchers) selecting the series of every version of `model`."""
        host = service_host(model, namespace)
        if self.name == "istio":
            return {
                "reporter": REPORTER,
                "destination_service_namespace": namespace,
                "destination_service_name": model,
            }, ()
        # `outbound_cluster` of any subset, as RE2 in a raw (backtick) PromQL string.
        pattern = rf"outbound\|{SERVICE_PORT}\|[^|]+\|{re.escape(host)}"
        return {}, (f"{self.version}=~`{pattern}`",)

    def version_value(self, namespace: str, model: str, version: str) -> str:
        """The value of the `version` label on `version`'s series."""
        if self.name == "istio":
            return version
        return outbound_cluster(SERVICE_PORT, subset_name(version), service_host(model, namespace))

    def matchers(self, namespace: str, model: str, version: str) -> dict[str, str]:
        """Exact matchers selecting the series of one version of `model`."""
        exact, _ = self.selection(namespace, model)
        return {**exact, self.version: self.version_value(namespace, model, version)}

    @property
    def answered(self) -> str:
        """The raw matcher of the series counting requests by response code: Envoy also writes
        each count by code class (`envoy_response_code_class`) under the same name, and summing both
        would count every request twice."""
        return f'{self.code}!=""'

    @property
    def errors(self) -> str:
        """The raw matcher of server errors (5xx answers, the mesh's own 503 and 504 included)."""
        return f'{self.code}=~"5.."'


MESH_SOURCES: dict[str, MeshSource] = {
    "istio": MeshSource(
        "istio",
        requests="istio_requests_total",
        code="response_code",
        duration="istio_request_duration_milliseconds",
        seconds_per_unit=0.001,
        version="destination_version",
    ),
    # Envoy's tag names, the whole cluster name one value (onebox/README.md).
    "envoy": MeshSource(
        "envoy",
        requests="envoy_cluster_upstream_rq",
        code="envoy_response_code",
        duration="envoy_cluster_upstream_rq_time",
        seconds_per_unit=0.001,
        version="envoy_cluster_name",
    ),
}


@dataclass(frozen=True)
class WindowCount:
    """A counter's increase over a window, per series, summed by version and `labels`.

    `series` is the sample name (a histogram's `_bucket`, `_sum` or `_count`); `only` a raw
    matcher keeping some of its series (the server errors); `source` "server" (the model servers'
    metrics, selected by `model`) or a key of MESH_SOURCES (selected by its `selection`), whose
    `version` label names the version. The count is exact, not PromQL's `increase()`, which
    extrapolates the sampled span to the window's edges (689 requests for 600 sent in a short
    window): it is computed from the instant queries of WINDOW_PARTS (and, for a series reset
    within the window or without a value at its start, its samples: `series_samples`) by
    `modelctl.core.analysis.window.window_counts`.
    """

    series: str
    labels: tuple[str, ...] = ()
    only: str = ""
    source: str = "server"
    version: str = "version"


def _mesh_counts(mesh: MeshSource) -> dict[str, WindowCount]:
    def count(series: str, *labels: str, only: str = "") -> WindowCount:
        return WindowCount(series, labels, only, mesh.name, mesh.version)

    return {
        f"{mesh.name}_requests_in_window": count(mesh.requests, only=mesh.answered),
        f"{mesh.name}_errors_in_window": count(mesh.requests, only=mesh.errors),
        f"{mesh.name}_latency_buckets_in_window": count(f"{mesh.duration}_bucket", "le"),
    }


# Counts over an analysis window (canary snapshots, A/B looks, shadow reports), by name.
WINDOW_COUNTS: dict[str, WindowCount] = {
    "requests_in_window": WindowCount(REQUESTS.name),
    "server_errors_in_window": WindowCount(REQUESTS.name, only=SERVER_ERRORS),
    "latency_buckets_in_window": WindowCount(f"{DURATION.name}_bucket", ("le",)),
    "predicted_class_in_window": WindowCount(PREDICTED_CLASS.name, PREDICTED_CLASS.labels),
    "score_buckets_in_window": WindowCount(f"{SCORE.name}_bucket", ("le",)),
    # The business value sent with the labels, and how many labels carried one (A/B analysis).
    "feedback_value_in_window": WindowCount(f"{FEEDBACK_VALUE.name}_sum"),
    "feedback_values_in_window": WindowCount(f"{FEEDBACK_VALUE.name}_count"),
    "feedback_in_window": WindowCount(FEEDBACK.name, FEEDBACK.labels),
    **{name: count for mesh in MESH_SOURCES.values() for name, count in _mesh_counts(mesh).items()},
}


def mesh_count(mesh: str, what: Literal["requests", "errors", "latency_buckets"]) -> str:
    """The name in WINDOW_COUNTS of a mesh's count of requests, errors or duration buckets."""
    return f"{MESH_SOURCES[mesh].name}_{what}_in_window"


def count_selection(name: str, namespace: str, model: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """(exact matchers, raw matchers) selecting the series of `model` of the window count `name`."""
    count = WINDOW_COUNTS[name]
    if count.source == "server":
        return {"model": model}, ()
    return MESH_SOURCES[count.source].selection(namespace, model)


# The instant queries (at the window's end) each window count is computed from, per series: the
# last value in the window; the value at its start, which is the last real sample at or before
# it within `bound` (a range selector skips the staleness markers a failed scrape writes, which
# hide the series from an instant selector: `x offset w` would read it as born in the window);
# the counter resets within it; and, asked only for a count with a series that has no value at
# the start, whether the series had any sample in the `history` before it (if not, it is new).
WINDOW_PARTS: dict[str, str] = {
    "end": "last_over_time({series}{selector}[{window}])",
    "start": "last_over_time({series}{selector}[{bound}] offset {window})",
    "resets": "resets({series}{selector}[{window}])",
    "earlier": "present_over_time({series}{selector}[{history}] offset {window})",
}
# The bound of a window's start value when Prometheus does not say its own lookback delta
# (`--query.lookback-delta`, default 5m: how old a sample an instant query still answers with).
LOOKBACK_DELTA = "5m"
# How far before a window's start a series without a value there is looked for: one seen in this
# span existed before the window (a target down across the start), one not seen is new (a pod
# born in the window, its counters starting at 0).
SERIES_HISTORY = "1d"


def window_queries(
    name: str,
    matchers: Mapping[str, str],
    window: str,
    raw: tuple[str, ...] = (),
    bound: str = LOOKBACK_DELTA,
) -> dict[str, str]:
    """The PromQL of each part of the window count `name` (a key of WINDOW_COUNTS) over the
    series matching `matchers` (and the `raw` matchers as written), keyed `<name>/<part>`;
    `window` and `bound` (how long before the window's start its value may be read) are
    Prometheus durations."""
    count = WINDOW_COUNTS[name]
    matching = selector(matchers, *raw, *([count.only] if count.only else []))
    return {
        f"{name}/{part}": template.format(
            series=count.series, selector=matching, window=window, bound=bound, history=SERIES_HISTORY
        )
        for part, template in WINDOW_PARTS.items()
    }


def series_samples(name: str, labels: Mapping[str, str], window: str) -> str:
    """The PromQL of one series' samples over `window` (a range vector): the series of the window
    count `name` with exactly `labels`."""
    return f"{WINDOW_COUNTS[name].series}{selector(labels)}[{window}]"


def selector(matchers: Mapping[str, str], *raw: str) -> str:
    """A PromQL label selector: `{key="value",...}` for `matchers`, then `raw` matchers as written."""
    parts = [f'{key}="{value}"' for key, value in matchers.items()] + list(raw)
    return "{" + ",".join(parts) + "}"


def query(name: str, matchers: Mapping[str, str], by: str = "", window: str = "", **fields: str) -> str:
    """The PromQL of the named query in `QUERIES` over the series matching `matchers`.

    Parameters
    ----------
    name
        A key of `QUERIES`.
    matchers
        Label name -> exact value, in the order they are written.
    by
        The labels to group by, comma separated (`"model, version"`).
    window
        The range of `rate`, a Prometheus duration (`"5m"`).
    fields
        The template's other fields (`aggregation`, `metric`).

    Raises
    ------
    KeyError
        `name` is not in `QUERIES`, or the template needs a field not given.
    """
    return QUERIES[name].format(
        selector=selector(matchers),
        server_errors=selector(matchers, SERVER_ERRORS),
        by=by,
        window=window,
        **fields,
    )
