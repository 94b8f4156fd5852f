"""The in-cluster canary analysis job of a stack with `analysis` settings: a CronJob running
`modelctl canary analyze` from the analysis image (`analysis.image`, built from
infra/Dockerfile.analysis: the core, infra and policies, git and ssh; the serving image installs
only what serving needs), its deploy key Secret, a ServiceAccount with
no Kubernetes permissions, and a NetworkPolicy letting it reach only Prometheus, DNS and the
git host.

The job clones the repository with the deploy key, analyzes every canary of its stack against
the in-cluster Prometheus, and pushes the commits (each holding its snapshot). On a production
stack it pushes rollbacks only (`--rollbacks-only`): a production step or promotion is reviewed
in a pull request, which the canary workflow proposes (tools/ci.py). A run never
overlaps the previous one (`concurrencyPolicy: Forbid`); a rejected push (someone else pushed)
fails the run, and the next one starts from the new main.
"""

from __future__ import annotations

from infra.common import (
    MANAGED_BY,
    MONITORING_NAMESPACE,
    STACK_LABEL,
    Obj,
    container_security,
    metadata,
    secret_placeholder,
)
from infra.workloads import RUN_AS
from modelctl.core.schema import AnalysisJob
from modelctl.core.state import Stack

NAME = "modelctl-canary-analysis"
KEY_FILE = "ssh-privatekey"
KNOWN_HOSTS = "known_hosts"
SECRET_MOUNT = "/etc/modelctl-analysis"
PROMETHEUS_PORT = 9090
DNS_PORT = 53
# What the run does, in the container's shell; the settings come in as environment variables.
SCRIPT = """\
set -eu
export GIT_SSH_COMMAND="ssh -i $KEY_DIR/ssh-privatekey -o UserKnownHostsFile=$KEY_DIR/known_hosts -o StrictHostKeyChecking=yes"
git clone --quiet --depth 50 --branch "$BRANCH" "$REPOSITORY" /workspace/repo
cd /workspace/repo
git config user.name "modelctl canary analysis"
git config user.email "canary-analysis@modelctl.invalid"
# Exit 2 (a rollback) and 3 (a hold) are decisions, not failures; 1 (an error) fails the run.
modelctl canary analyze --stack "$STACK" --prometheus "$PROMETHEUS_URL" $ANALYZE_FLAGS || [ $? -ge 2 ]
git push --quiet origin "HEAD:$BRANCH"
"""


def objects(stack: Stack) -> list[Obj]:
    """The job's objects, or none when the stack has no `analysis` settings."""
    job = stack.config.environment.analysis
    if job is None:
        return []
    return [service_account(stack), deploy_key(stack, job), cron_job(stack, job), network_policy(stack, job)]


def _labels(stack: Stack) -> dict[str, str]:
    return {**MANAGED_BY, STACK_LABEL: stack.name, "app.kubernetes.io/name": NAME}


def _meta(stack: Stack) -> Obj:
    return metadata(NAME, stack.config.environment.namespace, _labels(stack))


def service_account(stack: Stack) -> Obj:
    # No Role or RoleBinding names it, and no token is mounted: the job needs git and
    # Prometheus, nothing from the Kubernetes API.
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(stack),
        "automountServiceAccountToken": False,
    }


def deploy_key(stack: Stack, job: AnalysisJob) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(stack),
        "type": "kubernetes.io/ssh-auth",
        "stringData": {KEY_FILE: secret_placeholder(job.deploy_key_secret), KNOWN_HOSTS: job.known_hosts},
    }


def cron_job(stack: Stack, job: AnalysisJob) -> Obj:
    env = stack.config.environment
    settings = {
        "STACK": stack.name,
        "REPOSITORY": job.repository,
        "BRANCH": job.branch,
        "PROMETHEUS_URL": env.monitoring.prometheus_url or "",
        "KEY_DIR": SECRET_MOUNT,
        "HOME": "/workspace",
        "ANALYZE_FLAGS": "--rollbacks-only" if env.production else "",
    }
    container = {
        "name": "analyze",
        "image": job.image,
        "command": ["/bin/sh", "-c", SCRIPT],
        "env": [{"name": key, "value": value} for key, value in settings.items()],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "deploy-key", "mountPath": SECRET_MOUNT, "readOnly": True},
            {"name": "work", "mountPath": "/workspace"},
        ],
    }
    pod = {
        "serviceAccountName": NAME,
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "deploy-key", "secret": {"secretName": NAME, "defaultMode": 0o400}},
            {"name": "work", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _meta(stack),
        "spec": {
            "schedule": job.schedule,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": 600,
                    "template": {
                        # Outside the mesh: its egress is the NetworkPolicy's, not a sidecar's.
                        "metadata": {
                            "labels": _labels(stack),
                            "annotations": {"sidecar.istio.io/inject": "false"},
                        },
                        "spec": pod,
                    },
                }
            },
        },
    }


def network_policy(stack: Stack, job: AnalysisJob) -> Obj:
    """No ingress; egress only to DNS, the monitoring namespace's Prometheus and the git host."""
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(stack),
        "spec": {
            "podSelector": {"matchLabels": _labels(stack)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                {
                    "to": [dns],
                    "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}],
                },
                {"to": [prometheus], "ports": [{"protocol": "TCP", "port": PROMETHEUS_PORT}]},
                {
                    "to": [{"ipBlock": {"cidr": cidr}} for cidr in job.git_cidrs],
                    "ports": [{"protocol": "TCP", "port": job.git_port}],
                },
            ],
        },
    }
