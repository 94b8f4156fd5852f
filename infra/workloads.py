"""Namespace, ServiceAccount, Service, one Deployment (and HPA) per deployed version, PDB, NetworkPolicy."""

from __future__ import annotations

from infra import feedback_store
from infra.common import (
    HTTP_PORT,
    MANAGED_BY,
    MODEL_DIR,
    MONITORING_NAMESPACE,
    SERVICE_PORT,
    STACK_LABEL,
    ModelTarget,
    Obj,
    container_security,
    metadata,
)
from modelctl.core.contract import LIVE_PATH, READY_PATH
from modelctl.core.schema import VersionRecord
from modelctl.core.servingspec import ServingSpec

RUN_AS = 10001
GRACE_SECONDS = 30
# Envoy drains in-flight requests while the endpoint is being removed from every proxy.
PRESTOP_SLEEP_SECONDS = 5
ENVOY_METRICS_PORT = 15090
ISTIO_NAMESPACE = "istio-system"


def namespace(name: str, stack_name: str) -> Obj:
    labels = {**MANAGED_BY, STACK_LABEL: stack_name, "istio-injection": "enabled"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata(name, None, labels)}


def service_account(target: ModelTarget) -> Obj:
    # Annotations carry the cloud identity (e.g. an IAM role) the init container reads the
    # DVC remote with, so no credentials live in the cluster or in git.
    annotations = target.env.service_account_annotations
    extra = {"annotations": dict(annotations)} if annotations else {}
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(target.name, target.namespace, target.labels(), **extra),
        "automountServiceAccountToken": False,
    }


def service(target: ModelTarget) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(target.name, target.namespace, target.labels()),
        "spec": {
            "selector": target.selector(),
            "ports": [
                {
                    "name": "http",
                    "port": SERVICE_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def deployment(target: ModelTarget, version: str) -> Obj:
    labels = target.labels(version)
    record = target.model.versions[version]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(target.versioned_name(version), target.namespace, labels),
        # No `replicas`: the HPA owns the count, and re-applying a fixed number would fight it.
        "spec": {
            "selector": {"matchLabels": target.selector(version)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"modelctl.io/sha256": record.artifact.sha256},
                },
                "spec": _pod_spec(target, version, record),
            },
        },
    }


def _pod_spec(target: ModelTarget, version: str, record: VersionRecord) -> Obj:
    spec = ServingSpec.from_record(target.model, version, MODEL_DIR)
    return {
        "serviceAccountName": target.name,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [
            _fetch_container(
                target, "fetch-model", record.artifact.md5, record.artifact.sha256, spec.artifact_path
            ),
            _fetch_container(
                target, "fetch-profile", record.profile.md5, record.profile.sha256, spec.profile_path
            ),
        ],
        "containers": [_server_container(target, spec)],
        "volumes": [
            {"name": "models", "emptyDir": {"sizeLimit": "2Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
            feedback_store.secret_volume()[0],
        ],
        "topologySpreadConstraints": [
            _spread(target, version, "topology.kubernetes.io/zone"),
            _spread(target, version, "kubernetes.io/hostname"),
        ],
    }


def _fetch_container(target: ModelTarget, name: str, md5: str, sha256: str, output: str) -> Obj:
    """Fetch one file from the DVC remote by content address; `modelctl fetch` checks sha256."""
    return {
        "name": name,
        "image": target.env.image,
        "command": [
            "modelctl",
            "fetch",
            "--md5",
            md5,
            "--sha256",
            sha256,
            "--remote",
            target.env.dvc_remote,
            "-o",
            output,
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": container_security(),
        "volumeMounts": [{"name": "models", "mountPath": MODEL_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def _server_container(target: ModelTarget, spec: ServingSpec) -> Obj:
    resources = target.release.resources
    return {
        "name": "server",
        "image": target.env.image,
        "command": ["python", "-m", "serving"],
        "args": [*feedback_store.server_args(target.stack), *_prediction_log_args(target)],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": [{"name": key, "value": value} for key, value in spec.to_env().items()],
        "resources": {
            "requests": {"cpu": resources.cpu, "memory": resources.memory},
            "limits": {"cpu": resources.cpu_limit, "memory": resources.memory_limit},
        },
        "startupProbe": _probe(LIVE_PATH, period=2, failures=60),
        "readinessProbe": _probe(READY_PATH, period=5, failures=3),
        "livenessProbe": _probe(LIVE_PATH, period=10, failures=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "models", "mountPath": MODEL_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            feedback_store.secret_volume()[1],
        ],
    }


def _prediction_log_args(target: ModelTarget) -> list[str]:
    """The server's prediction-log flags: standard output, which the cluster's log pipeline
    collects with the pod's labels and `kubectl logs` reads (see serving/predlog.py)."""
    settings = target.release.prediction_log
    if settings is None:
        return []
    return ["--prediction-log", "-", "--prediction-log-sample", f"{settings.sample:g}"]


def _probe(path: str, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _spread(target: ModelTarget, version: str, key: str) -> Obj:
    return {
        "maxSkew": 1,
        "topologyKey": key,
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": target.selector(version)},
    }


def autoscaler(target: ModelTarget, version: str) -> Obj:
    replicas = target.release.replicas
    name = target.versioned_name(version)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, target.namespace, target.labels(version)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas.min,
            "maxReplicas": replicas.max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": replicas.target_cpu},
                    },
                }
            ],
        },
    }


def disruption_budget(target: ModelTarget) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(target.name, target.namespace, target.labels()),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": target.selector()}},
    }


def network_policy(target: ModelTarget) -> Obj:
    """Only meshed workloads, the ingress gateway and Prometheus may reach the model pods."""
    meshed = {"namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}}}
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ISTIO_NAMESPACE}}}
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(target.name, target.namespace, target.labels()),
        "spec": {
            "podSelector": {"matchLabels": target.selector()},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [meshed, gateway], "ports": [{"protocol": "TCP", "port": HTTP_PORT}]},
                {
                    "from": [prometheus],
                    "ports": [
                        {"protocol": "TCP", "port": HTTP_PORT},
                        {"protocol": "TCP", "port": ENVOY_METRICS_PORT},
                    ],
                },
            ],
        },
    }
