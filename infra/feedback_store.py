"""The feedback store of a stack: the Redis that remembers which predictions took their label
(serving/feedback.py), with its Service, NetworkPolicy, and the Secret of the receipts' keys and
its password that every model pod mounts too.

One replica with its append-only file on a PersistentVolume, fsynced before each answer: a label
taken is never forgotten by a restart (which would count a retried label twice). Its memory holds
one key per label until that prediction's receipt expires (`bench/feedback` measures it).
"""

from __future__ import annotations

from infra.common import MANAGED_BY, STACK_LABEL, Obj, container_security, metadata, secret_placeholder
from modelctl.core.contract import (
    FEEDBACK_SECRET,
    FEEDBACK_SECRET_DIR,
    FEEDBACK_STORE,
    FEEDBACK_STORE_PORT,
    RECEIPT_KEYS_FILE,
    STORE_PASSWORD_FILE,
    VERSION_LABEL,
)
from modelctl.core.schema import FeedbackStore, duration_seconds
from modelctl.core.state import Stack

# The official Redis image's user.
REDIS_USER = 999
DATA = "/data"
# Kubernetes expands $(STORE_PASSWORD) from the container's environment. Every claim is in the
# append-only file before it is answered; no snapshots; when full, refuse (503) rather than evict.
REDIS_ARGS = [
    "--port", str(FEEDBACK_STORE_PORT), "--requirepass", "$(STORE_PASSWORD)", "--dir", DATA,
    "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction",
]  # fmt: skip


def objects(stack: Stack) -> list[Obj]:
    """The store's objects, and the Secret the model pods read; none for a stack without models."""
    if not stack.config.releases:
        return []
    return [secret(stack), service(stack), stateful_set(stack), network_policy(stack)]


def server_args(stack: Stack) -> list[str]:
    """The model server's flags that take labels through this stack's store."""
    namespace = stack.config.environment.namespace
    ttl = duration_seconds(stack.config.environment.feedback_store.receipt_ttl)
    return [
        "--feedback-store",
        f"redis://{FEEDBACK_STORE}.{namespace}.svc.cluster.local:{FEEDBACK_STORE_PORT}/0",
        "--feedback-secret",
        FEEDBACK_SECRET_DIR,
        "--feedback-ttl-s",
        f"{ttl:.10g}",
    ]


def secret_volume() -> tuple[Obj, Obj]:
    """The Secret's volume and its read-only mount, for a model pod."""
    volume = {"name": "feedback", "secret": {"secretName": FEEDBACK_SECRET, "defaultMode": 0o440}}
    return volume, {"name": "feedback", "mountPath": FEEDBACK_SECRET_DIR, "readOnly": True}


def _labels(stack: Stack) -> dict[str, str]:
    return {**MANAGED_BY, STACK_LABEL: stack.name, "app.kubernetes.io/name": FEEDBACK_STORE}


def _meta(stack: Stack, name: str = FEEDBACK_STORE) -> Obj:
    return metadata(name, stack.config.environment.namespace, _labels(stack))


def secret(stack: Stack) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(stack, FEEDBACK_SECRET),
        "type": "Opaque",
        "stringData": {
            RECEIPT_KEYS_FILE: secret_placeholder(FeedbackStore.RECEIPT_KEYS_SECRET),
            STORE_PASSWORD_FILE: secret_placeholder(FeedbackStore.PASSWORD_SECRET),
        },
    }


def service(stack: Stack) -> Obj:
    # Headless: the StatefulSet's governing Service; its one pod is the store's address.
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(stack),
        "spec": {
            "clusterIP": "None",
            "selector": {"app.kubernetes.io/name": FEEDBACK_STORE},
            "ports": [
                {"name": "tcp-redis", "port": FEEDBACK_STORE_PORT, "targetPort": "redis", "protocol": "TCP"}
            ],
        },
    }


def stateful_set(stack: Stack) -> Obj:
    store = stack.config.environment.feedback_store
    probe = {"tcpSocket": {"port": "redis"}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    container = {
        "name": "redis",
        "image": store.image,
        "command": ["redis-server"],
        "args": REDIS_ARGS,
        "env": [
            {
                "name": "STORE_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": FEEDBACK_SECRET, "key": STORE_PASSWORD_FILE}},
            }
        ],
        "ports": [{"name": "redis", "containerPort": FEEDBACK_STORE_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "readinessProbe": probe,
        "livenessProbe": probe,
        "securityContext": container_security(),
        "volumeMounts": [{"name": "data", "mountPath": DATA}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(stack),
        "spec": {
            "serviceName": FEEDBACK_STORE,
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": FEEDBACK_STORE}},
            "template": {
                "metadata": {"labels": _labels(stack)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": REDIS_USER,
                        "runAsGroup": REDIS_USER,
                        "fsGroup": REDIS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": store.storage}},
                    },
                }
            ],
        },
    }


def network_policy(stack: Stack) -> Obj:
    """Only the stack's model servers (pods with a `version` label, ours) may reach the store."""
    servers = {
        "podSelector": {
            "matchLabels": dict(MANAGED_BY),
            "matchExpressions": [{"key": VERSION_LABEL, "operator": "Exists"}],
        }
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(stack),
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": FEEDBACK_STORE}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [servers], "ports": [{"protocol": "TCP", "port": FEEDBACK_STORE_PORT}]}],
        },
    }
