"""Prometheus and Alertmanager configuration from the rendered monitoring objects.

Scrape jobs follow what prometheus-operator generates for a ServiceMonitor
(https://prometheus-operator.dev/docs/api-reference/api/#monitoring.coreos.com/v1.ServiceMonitor):
job `serviceMonitor/<namespace>/<name>/<endpoint index>`, the target labels `namespace`, `service`,
`pod`, `container`, `endpoint` and `job` (the Service's name); PrometheusRule `spec.groups` become a
rule file as they are.
"""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelctl.core.schema import duration_seconds
from onebox.envoy import Unsupported

Obj = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """One local pod: its Deployment's pod labels, container and port name, and address."""

    pod: str
    namespace: str
    labels: dict[str, str]
    container: str
    port_name: str
    address: str


@dataclass(frozen=True)
class Timing:
    """Test settings shorten these; None keeps what the rendered objects say."""

    scrape_interval: str | None = None
    evaluation_interval: str = "15s"
    alert_for: str | None = None  # an upper bound on every rule's `for`
    group_wait: str | None = None
    group_interval: str | None = None


def _selected(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def scrape_configs(
    monitors: list[Obj], services: list[Obj], targets: list[Target], timing: Timing
) -> list[Obj]:
    """One scrape job per ServiceMonitor endpoint, with one static target per selected local pod."""
    jobs = []
    for monitor in monitors:
        spec = monitor["spec"]
        namespace = monitor["metadata"]["namespace"]
        allowed = set(spec.get("namespaceSelector", {}).get("matchNames", [namespace]))
        _check(spec, {"selector", "namespaceSelector", "endpoints"}, monitor)
        chosen = [
            s
            for s in services
            if s["metadata"]["namespace"] in allowed
            and _selected(s["metadata"].get("labels", {}), spec["selector"].get("matchLabels", {}))
        ]
        for index, endpoint in enumerate(spec["endpoints"]):
            _check(endpoint, {"port", "path", "interval", "scrapeTimeout"}, monitor)
            job: Obj = {
                "job_name": f"serviceMonitor/{namespace}/{monitor['metadata']['name']}/{index}",
                "metrics_path": endpoint.get("path", "/metrics"),
                "static_configs": [
                    _static(service, target)
                    for service in chosen
                    for target in targets
                    if target.namespace == service["metadata"]["namespace"]
                    and target.port_name == endpoint["port"]
                    and _selected(target.labels, service["spec"]["selector"])
                ],
            }
            interval = timing.scrape_interval or endpoint.get("interval")
            if interval:
                job["scrape_interval"] = interval
                timeout = endpoint.get("scrapeTimeout", interval)
                shorter = duration_seconds(timeout) <= duration_seconds(interval)
                job["scrape_timeout"] = timeout if shorter else interval
            jobs.append(job)
    return jobs


ENVOY_JOB = "envoy-stats"
ENVOY_STATS_PATH = "/stats/prometheus"


def envoy_scrape_config(admin: str, clusters: dict[str, dict[str, str]], timing: Timing) -> Obj:
    """The gateway's own statistics (Envoy's admin `/stats/prometheus` at `admin`, host:port), as
    Istio's sample PodMonitor `envoy-stats-monitor` scrapes a sidecar's. Each series of an outbound
    cluster (`envoy_cluster_name="outbound|<port>|<subset>|<host>"`) gains the `model`, `version` and
    `namespace` of the pods its subset selects (`clusters`: cluster name -> those labels), so a
    query selects model and version as it does on the servers' own metrics."""
    relabel = [
        {
            "source_labels": ["envoy_cluster_name"],
            "regex": re.escape(name),
            "target_label": label,
            "replacement": value,
        }
        for name, labels in sorted(clusters.items())
        for label, value in labels.items()
    ]
    job: Obj = {
        "job_name": ENVOY_JOB,
        "metrics_path": ENVOY_STATS_PATH,
        "static_configs": [{"targets": [admin], "labels": {"job": ENVOY_JOB, "pod": "gateway"}}],
        "metric_relabel_configs": relabel,
    }
    if timing.scrape_interval:
        job["scrape_interval"] = job["scrape_timeout"] = timing.scrape_interval
    return job


def _static(service: Obj, target: Target) -> Obj:
    name = service["metadata"]["name"]
    return {
        "targets": [target.address],
        "labels": {
            "namespace": target.namespace,
            "service": name,
            "pod": target.pod,
            "container": target.container,
            "endpoint": target.port_name,
            "job": name,
        },
    }


def _check(obj: Obj, allowed: set[str], monitor: Obj) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Unsupported(
            f"{monitor['kind']} {monitor['metadata']['name']}: {extra[0]} is not supported by the local stack"
        )


def rule_file(rule: Obj, timing: Timing) -> Obj:
    """A PrometheusRule's groups as a rule file, every `for` capped at `timing.alert_for`."""
    groups = copy.deepcopy(rule["spec"]["groups"])
    if timing.alert_for:
        cap = duration_seconds(timing.alert_for)
        for group in groups:
            for item in group["rules"]:
                if "for" in item and duration_seconds(item["for"]) > cap:
                    item["for"] = timing.alert_for
    return {"groups": groups}


def prometheus_config(jobs: list[Obj], rule_files: list[Path], alertmanager: str, timing: Timing) -> Obj:
    return {
        "global": {"evaluation_interval": timing.evaluation_interval},
        "rule_files": [str(path) for path in rule_files],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": jobs,
    }


def alertmanager_config(rendered: Obj, smtp: str, webhook: str, secrets: Path, timing: Timing) -> Obj:
    """The rendered alertmanager.yml, delivering to the local sinks.

    Email goes to the SMTP sink at `smtp` (host:port, no TLS); Slack and webhook receivers post to
    `webhook`/<receiver>, since their secret *is* the destination. Other secrets become files in
    `secrets` (`local_secret_files`).
    """
    config = copy.deepcopy(rendered)
    for key in ("group_wait", "group_interval"):
        value = getattr(timing, key)
        if value:
            config["route"][key] = value
    for receiver in config.get("receivers", []):
        for email in receiver.get("email_configs", []):
            email["smarthost"] = smtp
            email["require_tls"] = False
        for kind in ("slack_configs", "webhook_configs"):
            for item in receiver.get(kind, []):
                # The sink is the destination and takes no credential: drop the rendered file references.
                item.pop("api_url_file", None)
                item.pop("http_config", None)
                item["api_url" if kind == "slack_configs" else "url"] = f"{webhook}/{receiver['name']}"
    return local_secret_files(config, secrets)


SECRET_FILE_FIELDS = {"auth_password": "auth_password_file"}


def local_secret_files(config: Obj, folder: Path) -> Obj:
    """Each remaining secret field as its `*_file` twin, pointing at a file in `folder`.

    The local sinks accept any credential, so the file holds a stand-in; the field names are
    Alertmanager's (https://prometheus.io/docs/alerting/latest/configuration/).
    """
    for receiver in config.get("receivers", []):
        for item in receiver.get("email_configs", []):
            for field, file_field in SECRET_FILE_FIELDS.items():
                # render points `*_file` at the cluster's Secret mount; locally the file is a stand-in.
                if field in item or file_field in item:
                    path = folder / f"{receiver['name']}-{field}"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("local-stack\n", encoding="utf-8")
                    path.chmod(0o600)
                    item.pop(field, None)
                    item[file_field] = str(path)
    return config


def graph_links(objects: list[Obj], prometheus: str, model: str) -> list[Obj]:
    """Each panel of the rendered Grafana dashboards as a link to Prometheus' own graph page
    (`/graph?g0.expr=...`, one expression per panel target), its `$model` variable set to `model`:
    `[{"panel": title, "url": url}]`; a panel that queries nothing (a table of the releases) has
    no link."""
    links = []
    for config_map in objects:
        if config_map["kind"] != "ConfigMap" or "grafana_dashboard" not in config_map["metadata"].get(
            "labels", {}
        ):
            continue
        for text in config_map["data"].values():
            for panel in json.loads(text)["panels"]:
                if not panel["targets"]:
                    continue
                params = {}
                for index, target in enumerate(panel["targets"]):
                    params[f"g{index}.expr"] = target["expr"].replace("$model", model)
                    params[f"g{index}.tab"] = "0"
                    params[f"g{index}.range_input"] = "1h"
                links.append(
                    {"panel": panel["title"], "url": f"{prometheus}/graph?{urllib.parse.urlencode(params)}"}
                )
    return links
