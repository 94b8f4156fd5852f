"""What Prometheus scrapes: a ServiceMonitor per model; the pinned kube-prometheus-stack for `monitoring.install`."""

from __future__ import annotations

from dataclasses import dataclass

from infra.common import MANAGED_BY, MONITORING_NAMESPACE, ModelTarget, Obj, metadata
from modelctl.core.contract import METRICS_PATH


@dataclass(frozen=True)
class ChartPin:
    chart: str
    version: str
    repository: str
    namespace: str


# Ships prometheus-operator v0.93.0, the CRD version the rendered objects are validated against.
KUBE_PROMETHEUS_STACK = ChartPin(
    chart="kube-prometheus-stack",
    version="88.0.0",
    repository="https://prometheus-community.github.io/helm-charts",
    namespace=MONITORING_NAMESPACE,
)


def kube_prometheus_stack_values() -> Obj:
    """Select our ServiceMonitors, rules and AlertmanagerConfigs in every namespace, by label."""
    ours = {"matchLabels": MANAGED_BY}
    return {
        "prometheus": {
            "prometheusSpec": {
                "serviceMonitorSelector": ours,
                "serviceMonitorNamespaceSelector": {},
                "ruleSelector": ours,
                "ruleNamespaceSelector": {},
            }
        },
        "alertmanager": {
            "alertmanagerSpec": {
                "alertmanagerConfigSelector": ours,
                "alertmanagerConfigNamespaceSelector": {},
            }
        },
        "grafana": {
            "sidecar": {
                "dashboards": {"enabled": True, "label": "grafana_dashboard", "searchNamespace": "ALL"}
            }
        },
    }


def service_monitor(target: ModelTarget) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(target.name, target.namespace, target.labels()),
        "spec": {
            "selector": {"matchLabels": target.selector()},
            "namespaceSelector": {"matchNames": [target.namespace]},
            "endpoints": [{"port": "http", "path": METRICS_PATH, "interval": "15s", "scrapeTimeout": "10s"}],
        },
    }
