"""The names shells must agree on are typed once, in modelctl/core/contract.py, and mean the same
to the server that exports them and to the queries that read them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelctl.core import contract
from serving.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[1]
CODE = ("modelctl", "pipeline", "infra", "serving", "policies", "onebox")
METRICS = [value for value in vars(contract).values() if isinstance(value, contract.Metric)]
SHARED_NAMES = [
    *(metric.name for metric in METRICS),
    contract.VERSION_HEADER,
    contract.STACK_LABEL,
    contract.LIVE_PATH,
    contract.READY_PATH,
]


def string_literals(path: Path) -> list[str]:
    """Every string constant of a module's code (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def retyped_names(path: Path) -> list[str]:
    literals = string_literals(path)
    return [name for name in SHARED_NAMES if any(re.search(rf"{re.escape(name)}\b", s) for s in literals)]


def code_files() -> list[Path]:
    contract_file = ROOT / "modelctl/core/contract.py"
    return [p for folder in CODE for p in sorted((ROOT / folder).rglob("*.py")) if p != contract_file]


@pytest.mark.parametrize("path", code_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shared_name_is_typed_outside_the_contract(path: Path) -> None:
    assert retyped_names(path) == []


def test_the_check_finds_a_retyped_metric_name(tmp_path: Path) -> None:
    planted = tmp_path / "dashboard.py"
    planted.write_text(
        '"""Mentions model_requests_total in prose, which is fine."""\n'
        'QUERY = f"sum(rate(model_requests_total{{ns}}[5m]))"\n'
        'HEADER = "x-model-version"\n'
    )
    assert retyped_names(planted) == ["model_requests_total", "x-model-version"]


def test_the_server_exports_exactly_the_contracts_metrics() -> None:
    metrics = ServerMetrics("fraud-detection", "v1.0.0", "0" * 64, ["amount"], ["legit", "fraud"])
    metrics.engine("treelite", "", 0.0)
    metrics.feedback("v1.0.0", [(0, 1)], 2.5)
    exported = {
        family.name: {label for sample in family.samples for label in sample.labels if label != "le"}
        for family in text_string_to_metric_families(metrics.render().decode())
        if family.name.startswith("model_") and not family.name.endswith("_created")
    }
    # The text parser names a counter's family without its _total suffix.
    expected = {m.name.removesuffix("_total"): set(m.label_names) for m in METRICS}
    seen = {name: labels for name, labels in exported.items() if labels}
    assert set(exported) == set(expected)
    for name, labels in seen.items():
        assert labels == expected[name], name


def test_every_query_reads_only_exported_metrics() -> None:
    names = {m.name for m in METRICS}
    matchers = {"namespace": "prod", "model": "fraud-detection"}
    for name, template in contract.QUERIES.items():
        text = contract.query(name, matchers, "version", "5m", aggregation="avg", metric=contract.INFO.name)
        used = set(re.findall(r"\bmodel_[a-z_]+", text)) - {"model_names"}
        assert used, (name, template)
        # A histogram's series end in _bucket, a summary's in _sum and _count.
        assert {re.sub(r"_(bucket|sum|count)$", "", u) for u in used} <= names, text


def test_every_window_count_reads_an_exported_series_by_its_labels() -> None:
    by_name = {m.name: m for m in METRICS}
    for name, count in contract.WINDOW_COUNTS.items():
        if count.source != "server":
            continue
        metric = by_name[re.sub(r"_(bucket|sum|count)$", "", count.series)]
        assert set(count.labels) - {"le"} <= set(metric.label_names), name
        for promql in contract.window_queries(name, {"model": "fraud-detection"}, "90s").values():
            assert f'{count.series}{{model="fraud-detection"' in promql, promql


# Istio's standard metrics and labels (https://istio.io/latest/docs/reference/config/metrics/),
# counted at the caller's proxy; Envoy's cluster statistics as its Prometheus endpoint names them.
MESH_SERIES = {
    "istio": {"istio_requests_total", "istio_request_duration_milliseconds_bucket"},
    "envoy": {"envoy_cluster_upstream_rq", "envoy_cluster_upstream_rq_time_bucket"},
}
MESH_LABELS = {
    "istio": {"reporter", "destination_service_namespace", "destination_service_name", "response_code"},
    "envoy": {"envoy_cluster_name", "envoy_response_code"},
}


@pytest.mark.parametrize("mesh", sorted(contract.MESH_SOURCES))
def test_mesh_window_counts_read_the_meshs_documented_series_and_labels(mesh: str) -> None:
    counts = {n: c for n, c in contract.WINDOW_COUNTS.items() if c.source == mesh}
    assert set(counts) == {contract.mesh_count(mesh, w) for w in ("requests", "errors", "latency_buckets")}
    for name in counts:
        matchers, raw = contract.count_selection(name, "models-dev", "fraud-detection")
        for promql in contract.window_queries(name, matchers, "90s", raw).values():
            assert set(re.findall(r"\b(?:istio|envoy)_[a-z_]+(?=\{)", promql)) <= MESH_SERIES[mesh], promql
            assert set(re.findall(r"([a-z_]+)=~?[`\"]", promql)) <= MESH_LABELS[mesh], promql
    if mesh == "istio":
        assert (
            contract.MESH_SOURCES[mesh].selection("models-dev", "fraud-detection")[0]["reporter"] == "source"
        )


def test_a_versions_mesh_series_are_named_as_istio_names_the_subsets_cluster() -> None:
    envoy = contract.MESH_SOURCES["envoy"]
    cluster = envoy.version_value("models-dev", "fraud-detection", "v1.1.0")
    assert cluster == "outbound|80|v1-1-0|fraud-detection.models-dev.svc.cluster.local"
    (pattern,) = envoy.selection("models-dev", "fraud-detection")[1]
    regex = pattern.split("`")[1]
    assert re.fullmatch(regex, cluster)
    assert not re.fullmatch(regex, cluster.replace("fraud-detection", "churn"))
    assert not re.fullmatch(regex, cluster.replace("|80|", "|8080|"))
    assert (
        contract.MESH_SOURCES["istio"].matchers("models-dev", "churn", "v1.0.0")["destination_version"]
        == "v1.0.0"
    )
