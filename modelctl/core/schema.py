"""The shape of the desired state: model registry files and stack configuration.

Each class validates one file's content on its own; rules that span files (a stack naming
a version of a model) live in `modelctl.core.state`.
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from functools import total_ordering
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from modelctl.core.contract import MeshName
from modelctl.core.formats import FORMATS

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
VERSION = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$")
MD5 = re.compile(r"^[0-9a-f]{32}$")
DVC_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Prometheus' own grammar (prometheus/common model/time.go, ParseDuration): whole numbers, units from
# the largest to the smallest, each at most once; a bare "0" is the one unitless duration.
DURATION_UNITS = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
DURATION = re.compile("^" + "".join(rf"(?:(?P<{u}>\d+){u})?" for u in DURATION_UNITS) + "$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
CONFIG_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

SAFE_FORMATS = tuple(FORMATS)
UNSAFE_FORMATS = ("pickle", "pkl", "joblib", "dill", "cloudpickle")


def _matches(pattern: re.Pattern[str], what: str, fix: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}; {fix}")
        return value

    return AfterValidator(check)


ModelName = Annotated[
    str,
    _matches(DNS_LABEL, "a DNS-1123 label", "use lower-case letters, digits and '-', at most 63"),
]
VersionName = Annotated[
    str, _matches(VERSION, "a version like v1.2.3 or v1.2.3-rc.1", "write vMAJOR.MINOR.PATCH[-pre]")
]
Md5 = Annotated[str, _matches(MD5, "an md5 (32 lower-case hex digits)", "take it from dvc.lock")]
DvcMd5 = Annotated[
    str, _matches(DVC_MD5, "a DVC md5 (32 hex digits, '.dir' for folders)", "take it from dvc.lock")
]
Sha256 = Annotated[
    str, _matches(SHA256, "a sha256 (64 lower-case hex digits)", "let 'modelctl register' compute it")
]
CommitSha = Annotated[str, _matches(COMMIT, "a full 40-digit commit sha", "use 'git rev-parse HEAD'")]
MetricName = Annotated[
    str, _matches(METRIC_NAME, "a Prometheus metric name", "use letters, digits, '_' and ':'")
]
SecretKey = Annotated[
    str,
    _matches(
        CONFIG_KEY,
        "a config key name",
        "name the key set with 'pulumi config set --secret modelctl:<key>'",
    ),
]
Weight = Annotated[StrictInt, Field(ge=0, le=100)]
# Multiple-testing corrections across drift tests (modelctl.core.drift.adjust_pvalues).
Correction = Literal["holm", "bh", "bonferroni", "none"]


def _refuse_repeats(names: list[str], what: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names repeat: {', '.join(repeated)}; give each a unique name")


def duration_seconds(value: str) -> float:
    """Seconds in a Prometheus duration such as '1h30m' (`DURATION`'s grammar; '0' is 0).

    Raises
    ------
    ValueError
        `value` is not a Prometheus duration: the message says why and gives the right spelling.
    """
    return _duration_milliseconds(value) / 1000


# A Prometheus duration is a Go time.Duration: at most 2**63-1 nanoseconds (about 292 years).
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000
_LENIENT_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")


def _duration_milliseconds(value: str) -> int:
    if value == "0":
        return 0
    match = DURATION.match(value)
    if not value or match is None:
        raise ValueError(f"{value!r} is not a Prometheus duration: {_duration_fix(value)}")
    total = sum(int(match[unit] or 0) * round(factor * 1000) for unit, factor in DURATION_UNITS.items())
    if total > _MAX_DURATION_MS:
        raise ValueError(f"{value!r} is longer than Prometheus allows (about 292y); shorten it")
    return total


def _duration_fix(value: str) -> str:
    """Why `value` is no Prometheus duration, and its right spelling when it only has its units out of
    order, repeated or with fractions ('30m1h' -> '1h30m')."""
    rule = "units go from the largest to the smallest (y w d h m s ms), each once, with whole numbers"
    parts = _LENIENT_DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return f"{rule}; write e.g. 30s, 5m, 1h30m"
    milliseconds = round(sum(float(n) * DURATION_UNITS[u] * 1000 for n, u in parts))
    return f"{rule}; write {format_duration(milliseconds)}"


def format_duration(milliseconds: int) -> str:
    """A duration in Prometheus' canonical spelling (largest units first), e.g. 5400000 -> '1h30m'."""
    text = ""
    for unit, factor in DURATION_UNITS.items():
        count, milliseconds = divmod(milliseconds, round(factor * 1000))
        text += f"{count}{unit}" if count else ""
    return text or "0s"


def _zero_as_text(value: Any) -> Any:
    # YAML reads `for: 0` as the integer 0, which Prometheus accepts as a duration.
    return "0" if value == 0 and type(value) is int else value


def _prometheus_duration(value: str) -> str:
    _duration_milliseconds(value)
    return value


def _positive_duration(value: str) -> str:
    if _duration_milliseconds(value) == 0:
        raise ValueError(f"duration {value!r} is zero; give a positive duration like 5m")
    return value


Duration = Annotated[str, BeforeValidator(_zero_as_text), AfterValidator(_prometheus_duration)]
# A duration that must pass (an analysis interval, a cookie's lifetime): zero is refused.
PositiveDuration = Annotated[Duration, AfterValidator(_positive_duration)]


@total_ordering
class Version:
    """Semantic-version precedence for `vMAJOR.MINOR.PATCH[-pre]` names."""

    def __init__(self, name: str) -> None:
        match = VERSION.match(name)
        if not match:
            raise ValueError(f"{name!r} is not a version like v1.2.3")
        self.name = name
        self.core = (int(match[1]), int(match[2]), int(match[3]))
        self.pre: tuple[tuple[int, int | str], ...] = tuple(
            (0, int(part)) if part.isdigit() else (1, part)
            for part in (match[4].split(".") if match[4] else [])
        )

    def _key(self) -> tuple[Any, ...]:
        # A release sorts after all of its pre-releases.
        return (self.core, not self.pre, self.pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def bump(self, part: Literal["major", "minor", "patch"]) -> Version:
        major, minor, patch = self.core
        if part == "major":
            return Version(f"v{major + 1}.0.0")
        if part == "minor":
            return Version(f"v{major}.{minor + 1}.0")
        if self.pre:
            return Version(f"v{major}.{minor}.{patch}")
        return Version(f"v{major}.{minor}.{patch + 1}")


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt setting must never vanish silently."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# ---------------------------------------------------------------- models/<model>/model.yaml


class Feature(Strict):
    name: Annotated[str, _matches(IDENTIFIER, "an identifier", "use letters, digits and '_'")]
    type: Literal["float", "int", "bool"] = "float"
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _range(self) -> Feature:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; swap or correct them")
        return self


class Signature(Strict):
    """The model's input. A value outside a feature's [min, max] is predicted and flagged in the
    answer and in model_out_of_distribution_total (`on_out_of_range: flag`, the default), or
    refused with a 422 (`refuse`, for models whose answers outside the range are meaningless)."""

    features: list[Feature] = Field(min_length=1)
    on_out_of_range: Literal["flag", "refuse"] = "flag"

    @field_validator("features")
    @classmethod
    def _unique(cls, features: list[Feature]) -> list[Feature]:
        _refuse_repeats([f.name for f in features], "feature")
        return features

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]


class Output(Strict):
    classes: list[str] = Field(min_length=2)
    positive_class: str

    @model_validator(mode="after")
    def _positive_is_a_class(self) -> Output:
        if self.positive_class not in self.classes:
            raise ValueError(
                f"positive_class {self.positive_class!r} is not one of the classes; "
                f"pick one of {self.classes}"
            )
        return self


class ThresholdAlert(Strict):
    """An alert the model owner asks for: `metric operator threshold` held for `for`."""

    name: Annotated[str, _matches(IDENTIFIER, "an alert name", "use CamelCase letters and digits")]
    metric: MetricName
    operator: Literal[">", ">=", "<", "<=", "==", "!="]
    threshold: float
    for_: Duration = Field(default="5m", alias="for")
    severity: Literal["critical", "warning", "info"] = "warning"
    description: str = ""


class Artifact(Strict):
    path: str
    md5: Md5
    sha256: Sha256
    size: Annotated[StrictInt, Field(gt=0)]
    format: str
    trusted_types: list[
        Annotated[str, _matches(DOTTED_NAME, "a dotted type name", "e.g. sklearn.tree._tree.Tree")]
    ] = []

    @field_validator("format")
    @classmethod
    def _safe_format(cls, value: str) -> str:
        if value.lower() in UNSAFE_FORMATS:
            raise ValueError(
                f"format {value!r} is refused because loading it runs arbitrary code; "
                f"save the model in one of {', '.join(SAFE_FORMATS)} (modelctl/core/formats)"
            )
        if value not in SAFE_FORMATS:
            raise ValueError(f"format {value!r} is unknown; use one of {', '.join(SAFE_FORMATS)}")
        return value

    @model_validator(mode="after")
    def _matches_format(self) -> Artifact:
        fmt = FORMATS[self.format]
        if not self.path.endswith(fmt.suffix):
            raise ValueError(
                f"path {self.path} does not end in {fmt.suffix}, the {fmt.name} format's file name "
                f"({fmt.file_name}); register the artifact again rather than editing its record"
            )
        if self.trusted_types and not fmt.holds_code:
            raise ValueError(f"a {fmt.name} artifact lists trusted_types, but {fmt.trust}; remove them")
        return self

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _repo_relative(value)


class TrustedTypesFile(Strict):
    """`models/trusted-types.yaml`: the names a version record's artifact.trusted_types may list
    (see `modelctl.core.trusted`)."""

    namespaces: list[
        Annotated[str, _matches(MODULE_NAME, "a module name", "e.g. sklearn or scipy.sparse")]
    ] = []
    types: list[
        Annotated[str, _matches(DOTTED_NAME, "a dotted type name", "e.g. sklearn.tree._tree.Tree")]
    ] = []


class ProfileRef(Strict):
    path: str
    md5: Md5
    sha256: Sha256

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _repo_relative(value)


def _repo_relative(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/") or not value:
        raise ValueError(f"path {value!r} must be relative to the repository; write it as in dvc.yaml")
    return value


Status = Literal["active", "deprecated", "revoked"]


class BuildEnvironment(Strict):
    """What a version's bytes depend on besides code, params and data (`modelctl.core.buildenv`)."""

    python: str
    machine: str
    packages: dict[str, str]
    # Environment variables the stages ran under: kernel choices and thread counts.
    kernels: dict[str, str]


class VersionRecord(Strict):
    """An immutable record of one trained version; only `status` may change after merge."""

    artifact: Artifact
    profile: ProfileRef
    metrics: dict[str, float]
    params: dict[str, Any] = {}
    source_commit: CommitSha
    data_md5: DvcMd5
    # Absent from records registered before the build environment was recorded.
    build: BuildEnvironment | None = None
    created_at: datetime
    status: Status = "active"

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at has no time zone; write it in UTC like 2026-01-31T12:00:00Z")
        return value

    def failed_gates(self, gates: dict[str, float]) -> list[str]:
        """The gates this version misses, as 'metric value < minimum' phrases."""
        failed = []
        for metric, minimum in gates.items():
            value = self.metrics.get(metric)
            if value is None:
                failed.append(f"{metric} missing (needs >= {minimum})")
            elif value < minimum:
                failed.append(f"{metric} {value:g} < {minimum:g}")
        return failed


class ModelFile(Strict):
    """`models/<name>/model.yaml`."""

    name: ModelName
    description: str = ""
    owner: str
    signature: Signature
    output: Output
    gates: dict[
        Annotated[str, _matches(IDENTIFIER, "a metric name", "use the metric's name from metrics.json")],
        float,
    ] = {}
    alerts: list[ThresholdAlert] = []
    versions: dict[VersionName, VersionRecord] = {}

    @field_validator("alerts")
    @classmethod
    def _unique_alerts(cls, alerts: list[ThresholdAlert]) -> list[ThresholdAlert]:
        _refuse_repeats([a.name for a in alerts], "alert")
        return alerts

    def ordered_versions(self) -> list[str]:
        return sorted(self.versions, key=Version)

    def latest(self) -> str | None:
        ordered = self.ordered_versions()
        return ordered[-1] if ordered else None


# ---------------------------------------------------------------- Pulumi.<stack>.yaml


class Requires(Strict):
    """A version must have served on `stack` for at least `soak` before it serves here."""

    stack: ModelName
    soak: Duration = "24h"


class EmailReceiver(Strict):
    to: str
    from_: str = Field(alias="from")
    smarthost: Annotated[
        str, _matches(re.compile(r"^[^:\s]+:\d+$"), "host:port", "e.g. smtp.example.com:587")
    ]
    auth_username: str = ""
    auth_password_secret: SecretKey | None = None
    require_tls: StrictBool = True


class SlackReceiver(Strict):
    channel: str
    api_url_secret: SecretKey


class WebhookReceiver(Strict):
    """A webhook: its URL in plain text (refused if it holds a credential) and, where the endpoint
    wants one, a bearer token kept as a secret (Alertmanager's `http_config.authorization`).

    Alertmanager (0.25, Debian's) reads no webhook URL from a file, so a URL that is itself the
    credential cannot stay out of alertmanager.yml: such endpoints take a token in a header."""

    url: Annotated[
        str, _matches(re.compile(r"^https?://[^\s/]+"), "an http(s) URL", "write https://host/path")
    ]
    credentials_secret: SecretKey | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_url_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "url_secret" in data:
            raise ValueError(
                "url_secret is gone: Alertmanager cannot read a webhook URL from a file, so it would be "
                "written into alertmanager.yml; write the URL as 'url' and its token as 'credentials_secret'"
            )
        return data


class Receiver(Strict):
    name: ModelName
    severities: list[Literal["critical", "warning", "info"]] = ["critical", "warning"]
    email: EmailReceiver | None = None
    slack: SlackReceiver | None = None
    webhook: WebhookReceiver | None = None

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Receiver:
        kinds = [k for k in ("email", "slack", "webhook") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"receiver {self.name!r} has {len(kinds)} kinds; give exactly one of email, slack, webhook"
            )
        return self

    def secret_keys(self) -> list[str]:
        keys = [
            self.email.auth_password_secret if self.email else None,
            self.slack.api_url_secret if self.slack else None,
            self.webhook.credentials_secret if self.webhook else None,
        ]
        return [k for k in keys if k]


class Monitoring(Strict):
    install: StrictBool = False
    # Where `modelctl canary analyze` queries Prometheus (its HTTP API root), e.g. the
    # in-cluster service http://prometheus-operated.monitoring:9090.
    prometheus_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    # Whose request metrics say what callers got (the canary judge's errors and latency, the
    # alerts on a version's failures and on no traffic): `istio`, Istio's standard metrics from
    # the callers' proxies; `envoy`, Envoy's cluster statistics (`modelctl up` runs the stack
    # with Envoy as its data plane, and reads Envoy whatever this says).
    mesh: MeshName = "istio"


class AnalysisJob(Strict):
    """The in-cluster canary analysis: a CronJob running `modelctl canary analyze` (infra).

    It clones `repository` with a deploy key (the Pulumi secret config key `deploy_key_secret`),
    queries `monitoring.prometheus_url`, and pushes its commits to `branch`. Its NetworkPolicy
    lets it reach only Prometheus, DNS and the git host (`git_cidrs`, port `git_port`).
    """

    schedule: Annotated[str, Field(pattern=r"^(\S+\s+){4}\S+$")] = "*/5 * * * *"
    # Built from infra/Dockerfile.analysis (core, infra, policies, git, ssh; not the serving image).
    image: Annotated[str, Field(min_length=1)]
    repository: Annotated[str, Field(min_length=1)]
    branch: Annotated[str, Field(min_length=1)] = "main"
    # The git host's SSH host key line(s), as `ssh-keyscan` prints them: pushes verify it.
    known_hosts: Annotated[str, Field(min_length=1)]
    git_cidrs: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F:.]+/\d{1,3}$")]] = Field(min_length=1)
    git_port: Annotated[StrictInt, Field(ge=1, le=65535)] = 22
    deploy_key_secret: SecretKey


class Ingress(Strict):
    gateway: str | None = None
    domain: str | None = None


class FeedbackStore(Strict):
    """The Redis of a stack that remembers which predictions took their label (infra: a
    StatefulSet with its Service, NetworkPolicy and Secret). The receipts' signing keys and the
    store's password are the Pulumi secret config keys `receiptKeys` and `feedbackStorePassword`."""

    # Redis 7.0 or later (its SET takes NX and GET together); production pins it by digest.
    image: Annotated[str, Field(min_length=1)] = "docker.io/library/redis:7.0.15-alpine"
    storage: Annotated[str, Field(pattern=r"^\d+(Mi|Gi|Ti)$")] = "1Gi"
    # How long a prediction's receipt takes its label, in Prometheus' duration grammar.
    receipt_ttl: Duration = "35d"

    RECEIPT_KEYS_SECRET: ClassVar[str] = "receiptKeys"
    PASSWORD_SECRET: ClassVar[str] = "feedbackStorePassword"


class Environment(Strict):
    namespace: ModelName
    image: str
    dvc_remote: str
    production: StrictBool = False
    # The stack `modelctl up` runs on a workstation when no --stack is given.
    local: StrictBool = False
    requires: Requires | None = None
    receivers: list[Receiver] = []
    monitoring: Monitoring = Monitoring()
    ingress: Ingress = Ingress()
    # On each model's ServiceAccount, e.g. eks.amazonaws.com/role-arn for reading the remote.
    service_account_annotations: dict[str, str] = {}
    analysis: AnalysisJob | None = None
    feedback_store: FeedbackStore = FeedbackStore()

    def secret_keys(self) -> list[str]:
        """The Pulumi secret config keys (without the namespace) this environment names: its
        receivers' credentials, the analysis job's deploy key, the receipt keys and the feedback
        store's password."""
        keys = [key for receiver in self.receivers for key in receiver.secret_keys()]
        keys += [FeedbackStore.RECEIPT_KEYS_SECRET, FeedbackStore.PASSWORD_SECRET]
        return keys + ([self.analysis.deploy_key_secret] if self.analysis else [])

    @model_validator(mode="after")
    def _analysis_reads_prometheus(self) -> Environment:
        if self.analysis is not None and self.monitoring.prometheus_url is None:
            raise ValueError(
                "analysis runs the canary analysis job, which needs monitoring.prometheus_url; set it"
            )
        return self

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(
                f"image {value!r} is not an image reference; write registry/name:tag[@sha256:...]"
            )
        return value

    @field_validator("receivers")
    @classmethod
    def _unique_receivers(cls, receivers: list[Receiver]) -> list[Receiver]:
        _refuse_repeats([r.name for r in receivers], "receiver")
        return receivers


class Shadow(Strict):
    version: VersionName
    percent: Annotated[float, Field(gt=0, le=100)]


class PredictionLog(Strict):
    """Every served version of the model writes the prediction log (serving/predlog.py) to its
    standard output, for the cluster's log pipeline. One `sample` (the share of requests, chosen by
    a hash of the request id) for all versions, so a primary and its shadow log the same requests."""

    sample: Annotated[float, Field(gt=0, le=1)] = 1.0


class Sticky(Strict):
    cookie: Annotated[str, _matches(COOKIE_NAME, "a cookie name", "use letters, digits and '-'")] = (
        "model-version"
    )
    max_age: PositiveDuration = "24h"


class Replicas(Strict):
    min: Annotated[StrictInt, Field(ge=1)] = 2
    max: Annotated[StrictInt, Field(ge=1)] = 10
    target_cpu: Annotated[StrictInt, Field(ge=1, le=100)] = 70

    @model_validator(mode="after")
    def _order(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; raise max or lower min")
        return self


class Resources(Strict):
    cpu: str = "500m"
    memory: str = "512Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1Gi"


class Analysis(Strict):
    """How the canary judge decides, and the weights a canary steps through."""

    steps: list[Annotated[StrictInt, Field(ge=1, le=99)]] = [5, 10, 25, 50]
    interval: PositiveDuration = "5m"
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    # The canary's error rate may exceed the baseline's by the larger of these two.
    error_margin: Annotated[float, Field(ge=0)] = 0.005
    error_margin_relative: Annotated[float, Field(ge=0)] = 0.2
    latency_margin: Annotated[float, Field(ge=0)] = 0.10
    min_requests: Annotated[StrictInt, Field(ge=1)] = 500
    score_shift: Literal["warn", "critical"] = "warn"
    # Live accuracy from feedback labels: the canary's may trail the baseline's by this much;
    # judged when labels arrive, needed for promotion only when `require_accuracy`.
    accuracy_margin: Annotated[float, Field(ge=0, lt=1)] = 0.01
    require_accuracy: StrictBool = False
    # An end: a canary still inconclusive this long after it started is rolled back (or promoted).
    max_duration: Duration | None = None
    on_inconclusive: Literal["rollback", "promote"] = "rollback"

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps {steps} must increase; list them smallest first")
        return steps


# What an A/B experiment can be judged on: the feedback counters' quality metrics (the positive
# class is the model's output.positive_class) and the business value sent with the labels.
EXPERIMENT_METRICS = ("accuracy", "precision", "recall", "f1", "value")
ExperimentMetric = Literal["accuracy", "precision", "recall", "f1", "value"]


class Experiment(Strict):
    """How an A/B experiment is decided (`modelctl ab analyze`, modelctl.core.analysis.experiment).

    `effect` is the smallest difference worth detecting, in the metric's own unit (0.01 is one
    point of accuracy); `guardrails` must not get worse for the winner (`errors` and `latency` as
    the canary judge tests them, or any of the feedback metrics).
    """

    metric: ExperimentMetric = "accuracy"
    guardrails: list[Literal["errors", "latency", "accuracy", "precision", "recall", "f1", "value"]] = [
        "errors",
        "latency",
    ]
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    effect: Annotated[float, Field(gt=0)] = 0.01
    # The value counters keep sums, not squares: the spread of `value` per labelled request.
    value_sd: Annotated[float, Field(gt=0)] | None = None
    # Whole weekly cycles are common: no decision before this long after the split began.
    min_duration: Duration = "7d"
    max_duration: Duration | None = None

    @model_validator(mode="after")
    def _value_needs_spread(self) -> Experiment:
        if "value" in (self.metric, *self.guardrails) and self.value_sd is None:
            raise ValueError(
                "the value metric needs value_sd (the counters keep sums, not squares); "
                "set it to the standard deviation of value per labelled request"
            )
        if self.max_duration is not None and duration_seconds(self.max_duration) < duration_seconds(
            self.min_duration
        ):
            raise ValueError(
                f"max_duration {self.max_duration} is shorter than min_duration {self.min_duration}; raise it"
            )
        return self


class Hold(Strict):
    """A version rolled back from on a stack: no command gives it traffic there until the hold
    is cleared (`modelctl release-hold clear`, a reviewed commit)."""

    reason: Annotated[str, Field(min_length=1)]
    since: datetime

    @field_validator("since")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("since has no time zone; write it in UTC like 2026-01-31T12:00:00Z")
        return value


class Release(Strict):
    """One model's release on a stack.

    `rollback_to` is the stable version the current release started from (written by canary,
    A/B, shadow and blue-green, and kept by promote and the blue-green switch with the version
    at weight 0): `modelctl rollback` returns all traffic to it, whatever git's history holds.
    `held` lists the versions rolled back from, which may take no traffic here until cleared.
    """

    traffic: dict[VersionName, Weight] = Field(min_length=1)
    shadow: Shadow | None = None
    prediction_log: PredictionLog | None = None
    sticky: Sticky | None = None
    overrides: dict[Annotated[str, Field(min_length=1)], VersionName] = {}
    rollback_to: VersionName | None = None
    held: dict[VersionName, Hold] = {}
    replicas: Replicas = Replicas()
    resources: Resources = Resources()
    analysis: Analysis = Analysis()
    experiment: Experiment | None = None

    @field_validator("traffic")
    @classmethod
    def _sums_to_100(cls, traffic: dict[str, int]) -> dict[str, int]:
        total = sum(traffic.values())
        if total != 100:
            raise ValueError(f"weights sum to {total}, not 100; adjust them so they add up to 100")
        return traffic

    @model_validator(mode="after")
    def _rollback_target_and_holds(self) -> Release:
        if self.rollback_to is not None and self.rollback_to not in self.traffic:
            raise ValueError(
                f"rollback_to {self.rollback_to} is not deployed (not in traffic); "
                f"keep it in traffic (weight 0 at least) or remove rollback_to"
            )
        for path, version in self.routed():
            if version in self.held:
                raise ValueError(
                    f"{version} is held ({self.held[version].reason}) and may not take traffic at {path}; "
                    "clear the hold first with 'modelctl release-hold clear'"
                )
        if self.shadow is not None and self.traffic.get(self.shadow.version, 0) > 0:
            raise ValueError(
                f"shadow {self.shadow.version} already serves live traffic "
                f"({self.traffic[self.shadow.version]}%); a mirror copies requests to a version that "
                "serves none: remove the shadow, or give the version weight 0"
            )
        if self.rollback_to in self.held:
            raise ValueError(f"rollback_to {self.rollback_to} is held; roll back to a version that is not")
        return self

    def serving(self) -> list[str]:
        """Versions that take live traffic, in version order."""
        return sorted((v for v, w in self.traffic.items() if w > 0), key=Version)

    def deployed(self) -> list[str]:
        """Versions that need running pods: any weight (0 keeps a rollback target warm) and the shadow."""
        names = set(self.traffic) | ({self.shadow.version} if self.shadow else set())
        return sorted(names, key=Version)

    def referenced(self) -> list[tuple[str, str]]:
        """(key path, version) for every place this release names a version."""
        refs = [(f"traffic.{v}", v) for v in self.traffic]
        if self.shadow:
            refs.append(("shadow.version", self.shadow.version))
        refs += [(f"overrides.{h}", v) for h, v in self.overrides.items()]
        return refs

    def routed(self) -> list[tuple[str, str]]:
        """The places of `referenced()` that send requests to their version (a weight of 0
        keeps a version deployed without routing to it)."""
        return [(p, v) for p, v in self.referenced() if not p.startswith("traffic.") or self.traffic[v] > 0]


class StackConfig(Strict):
    """The `modelctl:environment` and `modelctl:releases` keys of a stack's config."""

    environment: Environment = Field(alias="modelctl:environment")
    releases: dict[ModelName, Release] = Field(default={}, alias="modelctl:releases")
