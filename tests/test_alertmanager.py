"""Alert rules and routing, checked by the real tools: `promtool check rules`, `promtool test rules`
(every built-in alert fires when it should and stays quiet when it should not) and `amtool`."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.alertmanager import native_config
from infra.build import build_stack
from infra.render import NATIVE_ALERTMANAGER, render_files
from modelctl.core.state import State, load_state
from tests.factories import default_docs, full_docs, write_repo

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "models-test"  # the full repository's staging stack
STABLE, CANARY = "v1.1.0", "v1.2.0"
BASE = f'namespace="{NAMESPACE}",model="fraud-detection"'
SECRETS = {
    "smtpPassword": "s3cret-smtp",
    "slackUrl": "https://hooks.example.com/slack",
    "pagerUrl": "https://pager.example.com/hook",
}

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


def rule_groups(state: State, stack: str, model: str | None = None) -> dict[str, Any]:
    """A Prometheus rule file with the groups of the stack's PrometheusRules (of one model if named)."""
    groups = [
        group
        for obj in build_stack(state, stack)
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
def test_promtool_accepts_every_rendered_rule_group(states: dict[str, State], tmp_path: Path) -> None:
    files = []
    for label, state in states.items():
        for stack in state.stacks:
            path = tmp_path / f"{label}-{stack}.yml"
            path.write_text(yaml.safe_dump(rule_groups(state, stack)))
            files.append(path.name)
    result = run("promtool", "check", "rules", *files, cwd=tmp_path)
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


@dataclass
class Scenario:
    name: str
    series: list[tuple[str, str]]
    fires: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    quiet: list[str] = field(default_factory=list)


def labels(severity: str, version: str | None = STABLE, **extra: str) -> dict[str, str]:
    found = {"severity": severity, "namespace": NAMESPACE, "model": "fraud-detection", **extra}
    return found | ({"version": version} if version else {})


SCENARIOS = [
    Scenario(
        "errors above 5%", requests(STABLE, 100, 20), fires={"ModelHighErrorRate": [labels("critical")]}
    ),
    Scenario("errors at 1%", requests(STABLE, 100, 1), quiet=["ModelHighErrorRate"]),
    Scenario("no 5xx at all", requests(STABLE, 100), quiet=["ModelHighErrorRate", "ModelNoTraffic"]),
    Scenario("slow p99", latency(STABLE, 0, 100), fires={"ModelHighLatencyP99": [labels("warning")]}),
    Scenario("fast p99", latency(STABLE, 100, 0), quiet=["ModelHighLatencyP99"]),
    Scenario(
        "drifted feature",
        [
            gauge("model_feature_drift", STABLE, 0.5, feature="amount"),
            gauge("model_feature_drift", STABLE, 0.05, feature="hour"),
        ],
        fires={"ModelFeatureDrift": [labels("warning", feature="amount")]},
    ),
    Scenario(
        "stable features",
        [gauge("model_feature_drift", STABLE, 0.05, feature="amount")],
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
        "requests stopped",
        [gauge("model_requests_total", STABLE, 500, code="200")],
        fires={"ModelNoTraffic": [labels("warning", None)]},
    ),
    Scenario(
        "no server reports",
        [gauge("model_feature_drift", STABLE, 0.05, feature="amount")],
        fires={"ModelNoTraffic": [labels("warning", None)]},
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


def _series(name: str, found: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(found.items())) + "}"


@needs_promtool
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_built_in_alerts_under_promtool(scenario: Scenario, states: dict[str, State], tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump(rule_groups(states["full"], "staging", "fraud-detection"))
    )
    (tmp_path / "test.yml").write_text(yaml.safe_dump(promtool_test(scenario), sort_keys=False))
    result = run("promtool", "test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_exercised_both_ways(states: dict[str, State]) -> None:
    names = {rule["alert"] for rule in fraud_rules(states)}
    fired = {name for s in SCENARIOS for name in s.fires}
    quiet = {name for s in SCENARIOS for name in s.quiet}
    assert names == fired == quiet


# ---------------------------------------------------------------- Alertmanager


@needs_amtool
def test_amtool_accepts_every_native_config(states: dict[str, State], tmp_path: Path) -> None:
    checked = []
    for label, state in states.items():
        for name, stack in state.stacks.items():
            config = native_config(stack, lambda key: SECRETS.get(key, f"https://hooks.example.com/{key}"))
            (tmp_path / f"{label}-{name}.yml").write_text(yaml.safe_dump(config))
            checked.append(f"{label}-{name}.yml")
    result = run("amtool", "check-config", *checked, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(checked) >= 6


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
    alert_labels: list[str], receivers: str, states: dict[str, State], tmp_path: Path
) -> None:
    config = native_config(states["full"].stacks["prod"], SECRETS.__getitem__)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    result = run(
        "amtool", "config", "routes", "test", "--config.file=alertmanager.yml", *alert_labels, cwd=tmp_path
    )
    assert result.stdout.strip() == receivers


def test_rendered_output_never_holds_a_secret_value(states: dict[str, State]) -> None:
    files = render_files(states["full"], "prod")
    text = "\n".join(files.values())
    assert "<secret:modelctl:pagerUrl>" in files[NATIVE_ALERTMANAGER]
    assert not any(value in text for value in SECRETS.values())
