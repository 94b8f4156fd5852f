"""Alert rules and routing, checked by the real tools: `promtool check rules`, `promtool test rules`
(every built-in alert fires when it should and stays quiet when it should not) and `amtool`."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.build import build_stack
from infra.render import NATIVE_ALERTMANAGER, NATIVE_RULES
from modelctl.core.contract import MESH_SOURCES, MeshName, secret_file
from modelctl.core.errors import UserError
from modelctl.core.schema import Shadow
from modelctl.core.state import State, load_state
from tests.conftest import RenderedStack
from tests.factories import default_docs, full_docs, write_repo

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "models-test"  # the full repository's staging stack
STABLE, CANARY = "v1.1.0", "v1.2.0"
BASE = f'namespace="{NAMESPACE}",model="fraud-detection"'
needs_promtool = pytest.mark.skipif(not shutil.which("promtool"), reason="promtool missing: run 'make tools'")
needs_amtool = pytest.mark.skipif(not shutil.which("amtool"), reason="amtool missing: run 'make tools'")


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, State]:
    states = {
        label: load_state(write_repo(tmp_path_factory.mktemp(label), models, stacks, git=False))
        for label, (models, stacks) in {"default": default_docs(), "full": full_docs()}.items()
    }
    states["repository"] = load_state(ROOT)  # the committed stacks, once there are any
    return states


def rule_groups(
    state: State, stack: str, model: str | None = None, mesh: MeshName | None = None
) -> dict[str, Any]:
    """A Prometheus rule file with the groups of the stack's PrometheusRules (of one model if named)."""
    groups = [
        group
        for obj in build_stack(state, stack, mesh)
        if obj["kind"] == "PrometheusRule" and model in (None, obj["metadata"]["labels"]["app"])
        for group in obj["spec"]["groups"]
    ]
    return {"groups": groups}


def fraud_rules(states: dict[str, State]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = rule_groups(states["full"], "staging", "fraud-detection")["groups"][0][
        "rules"
    ]
    return rules


def run(*command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_the_rules_render_writes_for_every_stack(
    rendered_stacks: list[RenderedStack],
) -> None:
    """The plain rule files `modelctl render` wrote, checked as they are: one invalid rule would
    drop every alert of the file. Each equals its PrometheusRule's groups (what the operator
    hands to Prometheus)."""
    files = []
    for rendered in rendered_stacks:
        for path in sorted(rendered.out.glob("*/prometheusrule.yaml")):
            native = rendered.out / NATIVE_RULES.format(model=path.parent.name)
            assert yaml.safe_load(native.read_text()) == {
                "groups": yaml.safe_load(path.read_text())["spec"]["groups"]
            }
            files.append(str(native))
    assert len(files) >= len(rendered_stacks)
    assert any(f.endswith("dev/prometheus/churn.rules.yml") for f in files)
    result = run("promtool", "check", "rules", *files, cwd=rendered_stacks[0].out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_summary_description_and_a_runbook_section(states: dict[str, State]) -> None:
    anchors = {
        line[3:].strip()
        for line in (ROOT / "infra/runbooks.md").read_text().splitlines()
        if line.startswith("## ")
    }
    for rule in fraud_rules(states):
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        assert annotations["runbook_url"].split("#")[1] in anchors, rule["alert"]


# ---------------------------------------------------------------- promtool unit tests


def counter(name: str, version: str, per_minute: float, **labels: str) -> tuple[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return f'{name}{{{BASE},version="{version}"{extra}}}', f"0+{per_minute:g}x40"


def gauge(name: str, version: str, value: float, **labels: str) -> tuple[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return f'{name}{{{BASE},version="{version}"{extra}}}', f"{value:g}x40"


def feedback(
    version: str, pod: str, *, legit_ok: float, fraud_ok: float, missed: float, false_alarm: float
) -> list[tuple[str, str]]:
    """One replica's feedback confusion counter, in labels per minute."""
    cells = {
        ("legit", "legit"): legit_ok,
        ("fraud", "fraud"): fraud_ok,
        ("fraud", "legit"): missed,
        ("legit", "fraud"): false_alarm,
    }
    return [
        counter("model_feedback_total", version, rate, actual=actual, predicted=predicted, pod=pod)
        for (actual, predicted), rate in cells.items()
    ]


def requests(version: str, ok: float, errors: float = 0) -> list[tuple[str, str]]:
    series = [counter("model_requests_total", version, ok, code="200")]
    if errors:
        series.append(counter("model_requests_total", version, errors, code="500"))
    return series


def latency(version: str, fast: float, slow: float) -> list[tuple[str, str]]:
    """Requests per minute under 100 ms and between 100 ms and 1 s."""
    name = "model_prediction_duration_seconds_bucket"
    return [
        counter(name, version, fast, le="0.1"),
        counter(name, version, fast + slow, le="1"),
        counter(name, version, fast + slow, le="+Inf"),
    ]


def _series(name: str, found: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(found.items())) + "}"


def called(version: str, per_minute: float, code: str = "200", mesh: MeshName = "istio") -> tuple[str, str]:
    """What the callers' proxies counted: `per_minute` requests to `version` answered `code`."""
    source = MESH_SOURCES[mesh]
    found = {**source.matchers(NAMESPACE, "fraud-detection", version), source.code: code}
    return _series(source.requests, found), f"0+{per_minute:g}x40"


def pod_up(version: str, value: int) -> tuple[str, str]:
    pod = f"fraud-detection-{version.replace('.', '-')}-5d8f7c9b6d-x7k2p"
    return _series("up", {"namespace": NAMESPACE, "job": "fraud-detection", "pod": pod}), f"{value}x40"


def by_class(version: str, per_minute: float, code_class: str = "5xx") -> tuple[str, str]:
    """Envoy's count of the same requests by code class, under the same name (not to be added)."""
    envoy = MESH_SOURCES["envoy"]
    found = {**envoy.matchers(NAMESPACE, "fraud-detection", version), "envoy_response_code_class": code_class}
    return _series(envoy.requests, found), f"0+{per_minute:g}x40"


# Both versions take traffic and answer it, and every pod is up: no mesh alert has cause.
HEALTHY_MESH = [called(STABLE, 900), called(CANARY, 100), pod_up(STABLE, 1), pod_up(CANARY, 1)]
MESH_ALERTS = ["ModelVersionFailingCallers", "ModelVersionUnavailable", "ModelNoTraffic"]


@dataclass
class Scenario:
    name: str
    series: list[tuple[str, str]]
    fires: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    quiet: list[str] = field(default_factory=list)
    mesh: MeshName | None = None


def labels(severity: str, version: str | None = STABLE, **extra: str) -> dict[str, str]:
    found = {"severity": severity, "namespace": NAMESPACE, "model": "fraud-detection", **extra}
    return found | ({"version": version} if version else {})


SCENARIOS = [
    Scenario(
        "errors above 5%", requests(STABLE, 100, 20), fires={"ModelHighErrorRate": [labels("critical")]}
    ),
    Scenario("errors at 1%", requests(STABLE, 100, 1), quiet=["ModelHighErrorRate"]),
    Scenario("no 5xx at all", requests(STABLE, 100), quiet=["ModelHighErrorRate"]),
    Scenario("slow p99", latency(STABLE, 0, 100), fires={"ModelHighLatencyP99": [labels("warning")]}),
    Scenario("fast p99", latency(STABLE, 100, 0), quiet=["ModelHighLatencyP99"]),
    Scenario(
        "drifted feature",
        [
            gauge("model_feature_drift_p_value", STABLE, 1e-6, feature="amount"),
            gauge("model_feature_drift_p_value", STABLE, 0.04, feature="hour"),
        ],
        fires={"ModelFeatureDrift": [labels("warning", feature="amount")]},
    ),
    Scenario(
        "stable features",
        [gauge("model_feature_drift_p_value", STABLE, 0.01, feature="amount")],
        quiet=["ModelFeatureDrift"],
    ),
    Scenario(
        "10% of one feature out of range",
        [
            counter("model_predictions_total", STABLE, 100),
            counter("model_out_of_distribution_total", STABLE, 10, feature="amount"),
            counter("model_out_of_distribution_total", STABLE, 1, feature="hour"),
        ],
        fires={"ModelOutOfDistribution": [labels("warning", feature="amount")]},
    ),
    Scenario(
        "1% out of range",
        [
            counter("model_predictions_total", STABLE, 100),
            counter("model_out_of_distribution_total", STABLE, 1, feature="amount"),
        ],
        quiet=["ModelOutOfDistribution"],
    ),
    Scenario(
        "requests stopped at the mesh, the servers' counters still there",
        [gauge("model_requests_total", STABLE, 500, code="200"), (called(STABLE, 0)[0], "500x40")],
        fires={"ModelNoTraffic": [labels("warning", None)]},
    ),
    Scenario(
        "no mesh series at all",
        [gauge("model_feature_drift", STABLE, 0.05, feature="amount"), *requests(STABLE, 100)],
        fires={"ModelNoTraffic": [labels("warning", None)]},
    ),
    Scenario("healthy mesh", HEALTHY_MESH, quiet=MESH_ALERTS),
    Scenario(
        "healthy mesh, Envoy",
        [called(STABLE, 900, mesh="envoy"), called(CANARY, 100, mesh="envoy"), *HEALTHY_MESH[2:]],
        quiet=MESH_ALERTS,
        mesh="envoy",
    ),
    Scenario(
        "the canary's requests fail at the callers' proxies, never reaching a server",
        # The servers saw nothing wrong: the stable one answered 200, the canary was never reached.
        [*requests(STABLE, 900), called(STABLE, 900), called(CANARY, 100, "503"), *HEALTHY_MESH[2:]],
        fires={"ModelVersionFailingCallers": [labels("critical", CANARY)]},
        quiet=["ModelHighErrorRate"],
    ),
    Scenario(
        "6% of the canary's requests time out at Envoy (its count by class would halve that to 3%)",
        [
            called(STABLE, 900, mesh="envoy"),
            called(CANARY, 6, "504", "envoy"),
            by_class(CANARY, 6),
            called(CANARY, 94, mesh="envoy"),
            by_class(CANARY, 94, "2xx"),
            *HEALTHY_MESH[2:],
        ],
        fires={"ModelVersionFailingCallers": [labels("critical", CANARY)]},
        mesh="envoy",
    ),
    Scenario(
        "the canary times out at Envoy",
        [
            called(STABLE, 900, mesh="envoy"),
            called(CANARY, 90, "504", "envoy"),
            called(CANARY, 10, mesh="envoy"),
            *HEALTHY_MESH[2:],
        ],
        fires={"ModelVersionFailingCallers": [labels("critical", CANARY)]},
        mesh="envoy",
    ),
    Scenario(
        "1% of the canary's requests fail at the mesh",
        [called(STABLE, 900), called(CANARY, 99), called(CANARY, 1, "503"), *HEALTHY_MESH[2:]],
        quiet=["ModelVersionFailingCallers"],
    ),
    Scenario(
        "the canary's only pod is down",
        [*HEALTHY_MESH[:3], pod_up(CANARY, 0)],
        fires={"ModelVersionUnavailable": [labels("critical", CANARY)]},
    ),
    Scenario(
        "no pod of the canary is scraped at all",
        HEALTHY_MESH[:3],
        fires={"ModelVersionUnavailable": [labels("critical", CANARY)]},
    ),
    Scenario(
        "only a shadow's mirrored copies arrive (Envoy counts them at the shadow's cluster)",
        [
            (called(STABLE, 0, mesh="envoy")[0], "500x40"),
            (called(CANARY, 0, mesh="envoy")[0], "100x40"),
            called("v1.0.0", 100, mesh="envoy"),
        ],
        fires={"ModelNoTraffic": [labels("warning", None)]},
        mesh="envoy",
    ),
    Scenario(
        "live quality below the gates, summed over two replicas",
        # accuracy 100 / 140 = 0.71, fraud recall 20 / 40 = 0.5
        feedback(STABLE, "pod-a", legit_ok=40, fraud_ok=10, missed=10, false_alarm=10)
        + feedback(STABLE, "pod-b", legit_ok=40, fraud_ok=10, missed=10, false_alarm=10),
        fires={
            "ModelLiveAccuracyBelowGate": [labels("critical")],
            "ModelLiveRecallBelowGate": [labels("critical")],
            "LowLiveAccuracy": [labels("critical")],
        },
    ),
    Scenario(
        "live quality above the gates",
        # accuracy 190 / 200 = 0.95, fraud recall 45 / 50 = 0.9 (one pod alone would say 0.8)
        feedback(STABLE, "pod-a", legit_ok=70, fraud_ok=20, missed=5, false_alarm=5)
        + feedback(STABLE, "pod-b", legit_ok=75, fraud_ok=25, missed=0, false_alarm=0),
        quiet=["ModelLiveAccuracyBelowGate", "ModelLiveRecallBelowGate", "LowLiveAccuracy"],
    ),
    Scenario(
        "owner threshold crossed",
        [gauge("model_prediction_score_sum", STABLE, 2e6)],
        fires={"HighFraudScore": [labels("warning")]},
    ),
    Scenario(
        "owner threshold held", [gauge("model_prediction_score_sum", STABLE, 10)], quiet=["HighFraudScore"]
    ),
    Scenario(
        "canary fails more than stable",
        requests(STABLE, 1000) + requests(CANARY, 100, 5),
        fires={"ModelCanaryWorseThanStable": [labels("warning", CANARY)]},
    ),
    Scenario(
        "canary slower than stable",
        latency(STABLE, 100, 0) + latency(CANARY, 0, 100),
        fires={"ModelCanaryWorseThanStable": [labels("warning", CANARY)]},
    ),
    Scenario(
        "canary as good as stable",
        requests(STABLE, 900, 1) + requests(CANARY, 100) + latency(STABLE, 90, 10) + latency(CANARY, 9, 1),
        quiet=["ModelCanaryWorseThanStable"],
    ),
]


def promtool_test(scenario: Scenario) -> dict[str, Any]:
    at = "30m"
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": scenario.name,
                "interval": "1m",
                "input_series": [{"series": series, "values": values} for series, values in scenario.series],
                "alert_rule_test": [
                    {"eval_time": at, "alertname": name, "exp_alerts": []} for name in scenario.quiet
                ],
                "promql_expr_test": [
                    {
                        "expr": f'ALERTS{{alertname="{name}",alertstate="firing"}}',
                        "eval_time": at,
                        "exp_samples": [
                            {
                                "labels": _series(
                                    "ALERTS", {"alertname": name, "alertstate": "firing", **found}
                                ),
                                "value": 1,
                            }
                            for found in expected
                        ],
                    }
                    for name, expected in scenario.fires.items()
                ],
            }
        ],
    }


@needs_promtool
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_built_in_alerts_under_promtool(scenario: Scenario, states: dict[str, State], tmp_path: Path) -> None:
    state = states["full"]
    if "shadow" in scenario.name:
        state = with_shadow(state, "v1.0.0")
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump(rule_groups(state, "staging", "fraud-detection", scenario.mesh))
    )
    (tmp_path / "test.yml").write_text(yaml.safe_dump(promtool_test(scenario), sort_keys=False))
    result = run("promtool", "test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def with_shadow(state: State, version: str) -> State:
    """`state` with staging's fraud-detection mirroring to `version` (a registered version)."""
    stack = state.stack("staging")
    release = stack.config.releases["fraud-detection"]
    shadowed = release.model_copy(update={"shadow": Shadow(version=version, percent=100)})
    config = stack.config.model_copy(
        update={"releases": {**stack.config.releases, "fraud-detection": shadowed}}
    )
    stacks = {**state.stacks, "staging": dataclasses.replace(stack, config=config)}
    return dataclasses.replace(state, stacks=stacks)


def test_every_alert_is_exercised_both_ways(states: dict[str, State]) -> None:
    names = {rule["alert"] for rule in fraud_rules(states)}
    fired = {name for s in SCENARIOS for name in s.fires}
    quiet = {name for s in SCENARIOS for name in s.quiet}
    assert names == fired == quiet


# ---------------------------------------------------------------- Alertmanager


def alertmanager_files(rendered_stacks: list[RenderedStack]) -> dict[str, Path]:
    return {
        f"{r.label}/{r.stack}": r.file(NATIVE_ALERTMANAGER)
        for r in rendered_stacks
        if r.file(NATIVE_ALERTMANAGER).is_file()
    }


@needs_amtool
def test_amtool_accepts_the_alertmanager_yml_render_writes_for_every_stack(
    rendered_stacks: list[RenderedStack],
) -> None:
    files = alertmanager_files(rendered_stacks)
    assert {"repository/prod", "repository/staging", "full/prod", "full/staging"} <= set(files)
    result = run("amtool", "check-config", *map(str, files.values()), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files)


@needs_amtool
@pytest.mark.parametrize(
    ("alert_labels", "receivers"),
    [
        (["severity=critical", "namespace=models-prod"], "oncall-email,ml-slack,pager"),
        (["severity=warning", "namespace=models-prod"], "ml-slack,pager"),
        (["severity=info", "namespace=models-prod"], "null"),
        (["severity=critical", "namespace=elsewhere"], "null"),
    ],
)
def test_alerts_reach_the_receivers_of_their_severity(
    alert_labels: list[str], receivers: str, rendered_stacks: list[RenderedStack]
) -> None:
    config = alertmanager_files(rendered_stacks)["full/prod"]
    result = run("amtool", "config", "routes", "test", f"--config.file={config}", *alert_labels, cwd=ROOT)
    assert result.stdout.strip() == receivers


def test_credentials_are_read_from_the_mounted_secret(rendered_stacks: list[RenderedStack]) -> None:
    """Every credential of alertmanager.yml is a `*_file` path into the Secret's mount, never a value
    or a placeholder."""
    config = yaml.safe_load(alertmanager_files(rendered_stacks)["full/prod"].read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["oncall-email"]["email_configs"][0]["auth_password_file"] == secret_file("smtpPassword")
    assert receivers["ml-slack"]["slack_configs"][0]["api_url_file"] == secret_file("slackUrl")
    assert receivers["pager"]["webhook_configs"][0] == {
        "url": "https://pager.example.com/hook",
        "send_resolved": True,
        "http_config": {"authorization": {"type": "Bearer", "credentials_file": secret_file("pagerToken")}},
    }
    assert secret_file("smtpPassword") == "/etc/alertmanager/secrets/modelctl-alerting/smtpPassword"
    for path in alertmanager_files(rendered_stacks).values():
        text = path.read_text()
        assert "<secret:" not in text
        assert not re.search(r"^\s*(api_url|auth_password|credentials|url_secret):", text, re.MULTILINE), text


@needs_amtool
def test_amtool_refuses_what_render_used_to_write(tmp_path: Path) -> None:
    """The placeholders render wrote before: amtool's refusal is what the test above guards against."""
    config = {
        "route": {"receiver": "chat"},
        "receivers": [
            {"name": "chat", "slack_configs": [{"channel": "#x", "api_url": "<secret:modelctl:x>"}]}
        ],
    }
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    result = run("amtool", "check-config", "alertmanager.yml", cwd=tmp_path)
    assert result.returncode != 0


def test_a_webhook_url_secret_is_refused_with_the_way_out(tmp_path: Path) -> None:
    models, stacks = full_docs()
    stacks["prod"]["config"]["modelctl:environment"]["receivers"][2]["webhook"] = {"url_secret": "pagerUrl"}
    root = write_repo(tmp_path, models, stacks, git=False)
    with pytest.raises(
        UserError, match="url_secret is gone: Alertmanager cannot read a webhook URL from a file"
    ):
        load_state(root)
