"""Every invariant of the desired state, as the one error line a user sees."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelctl.cli import main
from modelctl.core.errors import UserError, UserErrors, as_list
from modelctl.core.schema import ThresholdAlert, Version, duration_seconds
from modelctl.core.state import load_state
from tests.factories import default_docs, write_repo


def errors_for(tmp_path: Path, models: dict[str, Any], stacks: dict[str, Any]) -> list[str]:
    root = write_repo(tmp_path / "repo", models, stacks, git=False)
    with pytest.raises((UserError, UserErrors)) as caught:
        load_state(root)
    assert isinstance(caught.value, UserError | UserErrors)
    return [str(e) for e in as_list(caught.value)]


def docs() -> tuple[dict[str, Any], dict[str, Any]]:
    return copy.deepcopy(default_docs())


def fraud(models: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = models["fraud-detection"]
    return doc


def releases(stacks: dict[str, Any], stack: str) -> dict[str, Any]:
    doc: dict[str, Any] = stacks[stack]["config"]["modelctl:releases"]["fraud-detection"]
    return doc


def test_default_state_is_valid(repo: Path) -> None:
    state = load_state(repo)
    assert sorted(state.stacks) == ["dev", "prod", "staging"]
    assert state.models["fraud-detection"].ordered_versions() == ["v1.0.0", "v1.1.0"]


def test_weights_must_sum_to_100(tmp_path: Path) -> None:
    models, stacks = docs()
    releases(stacks, "staging")["traffic"] = {"v1.0.0": 80, "v1.1.0": 10}
    [line] = errors_for(tmp_path, models, stacks)
    assert line.startswith("Pulumi.staging.yaml:")
    assert "config.modelctl:releases.fraud-detection.traffic: weights sum to 90, not 100" in line


@pytest.mark.parametrize("weight", [50.5, "50", -10, 110])
def test_weights_are_whole_numbers_from_0_to_100(tmp_path: Path, weight: Any) -> None:
    models, stacks = docs()
    releases(stacks, "staging")["traffic"] = {"v1.0.0": weight, "v1.1.0": 50}
    lines = errors_for(tmp_path, models, stacks)
    assert any("traffic.v1.0.0" in line for line in lines), lines


def test_model_names_are_dns_labels(tmp_path: Path) -> None:
    models, _stacks = docs()
    doc = fraud(models)
    doc["name"] = "Fraud_Detection"
    lines = errors_for(tmp_path, {"Fraud_Detection": doc}, {})
    assert any("name: 'Fraud_Detection' is not a DNS-1123 label" in line for line in lines), lines


def test_versions_are_semantic(tmp_path: Path) -> None:
    models, stacks = docs()
    fraud(models)["versions"]["1.2"] = fraud(models)["versions"]["v1.0.0"]
    [line] = errors_for(tmp_path, models, stacks)
    assert "versions.1.2: '1.2' is not a version like v1.2.3" in line
    assert "write vMAJOR.MINOR.PATCH[-pre]" in line


def test_unregistered_version_is_refused(tmp_path: Path) -> None:
    models, stacks = docs()
    releases(stacks, "dev")["traffic"] = {"v9.0.0": 100}
    [line] = errors_for(tmp_path, models, stacks)
    lines = (tmp_path / "repo/Pulumi.dev.yaml").read_text().splitlines()
    number = next(i for i, text in enumerate(lines, 1) if text.strip().startswith("v9.0.0:"))
    assert line.startswith(
        f"Pulumi.dev.yaml:{number}: config.modelctl:releases.fraud-detection.traffic.v9.0.0:"
    )
    assert (
        "version v9.0.0 of fraud-detection is not registered; register it first or use one of: v1.0.0, v1.1.0"
        in line
    )


def test_revoked_versions_are_not_referenced(tmp_path: Path) -> None:
    models, stacks = docs()
    fraud(models)["versions"]["v1.1.0"]["status"] = "revoked"
    lines = errors_for(tmp_path, models, stacks)
    assert any(
        line.startswith("Pulumi.dev.yaml")
        and "v1.1.0 of fraud-detection is revoked; name an active version there instead (edit the "
        "stack file), or revert the commit that revoked it"
        in line
        for line in lines
    ), lines


def test_deprecated_versions_may_keep_their_traffic(tmp_path: Path) -> None:
    models, stacks = docs()
    fraud(models)["versions"]["v1.1.0"]["status"] = "deprecated"
    load_state(write_repo(tmp_path / "repo", models, stacks, git=False))


def test_shadow_and_override_versions_must_exist(tmp_path: Path) -> None:
    models, stacks = docs()
    release = releases(stacks, "dev")
    release["shadow"] = {"version": "v2.0.0", "percent": 10}
    release["overrides"] = {"beta": "v3.0.0"}
    lines = errors_for(tmp_path, models, stacks)
    text = (tmp_path / "repo/Pulumi.dev.yaml").read_text().splitlines()
    shadow = next(i for i, line in enumerate(text, 1) if line.strip() == "version: v2.0.0")
    beta = next(i for i, line in enumerate(text, 1) if line.strip() == "beta: v3.0.0")
    assert any(
        f"Pulumi.dev.yaml:{shadow}: " in line and "shadow.version: version v2.0.0" in line for line in lines
    )
    assert any(
        f"Pulumi.dev.yaml:{beta}: " in line and "overrides.beta: version v3.0.0" in line for line in lines
    )


def test_production_traffic_must_pass_the_gates(tmp_path: Path) -> None:
    models, stacks = docs()
    fraud(models)["versions"]["v1.0.0"]["metrics"]["recall"] = 0.6
    [line] = errors_for(tmp_path, models, stacks)
    assert line.startswith("Pulumi.prod.yaml")
    assert "fails the promotion gates (recall 0.6 < 0.75) on a production stack" in line


def test_gates_do_not_apply_to_non_production_stacks(tmp_path: Path) -> None:
    models, stacks = docs()
    fraud(models)["versions"]["v1.1.0"]["metrics"]["recall"] = 0.6
    load_state(write_repo(tmp_path / "repo", models, stacks, git=False))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("md5", "abc", "is not an md5"),
        ("sha256", "F" * 64, "is not a sha256"),
    ],
)
def test_hashes_must_be_well_formed(tmp_path: Path, field: str, value: str, message: str) -> None:
    models, stacks = docs()
    fraud(models)["versions"]["v1.0.0"]["artifact"][field] = value
    [line] = errors_for(tmp_path, models, stacks)
    assert f"versions.v1.0.0.artifact.{field}: " in line
    assert message in line


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_pickle_formats_are_refused(tmp_path: Path, fmt: str) -> None:
    models, stacks = docs()
    fraud(models)["versions"]["v1.0.0"]["artifact"]["format"] = fmt
    [line] = errors_for(tmp_path, models, stacks)
    assert f"format '{fmt}' is refused because loading it runs arbitrary code" in line
    assert "skops" in line


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        (
            lambda m, s: s["dev"]["config"].update(
                {"modelctl:release": s["dev"]["config"].pop("modelctl:releases")}
            ),
            "config.modelctl:release: unknown key 'modelctl:release'; "
            "did you mean 'modelctl:releases'? (or remove it)",
        ),
        (
            lambda m, s: s["dev"]["config"].update({"modelctl:enviroment": {}}),
            "config.modelctl:enviroment: unknown key 'modelctl:enviroment'; did you mean 'modelctl:environment'?",
        ),
        (
            lambda m, s: s["dev"]["config"].update({"modelctll:releases": {}}),
            "config.modelctll:releases: unknown config namespace 'modelctll'; did you mean 'modelctl:releases'?",
        ),
        (
            lambda m, s: releases(s, "dev").update({"shadoww": {"version": "v1.0.0", "percent": 5}}),
            "releases.fraud-detection.shadoww: unknown key 'shadoww'; did you mean 'shadow'?",
        ),
        (
            lambda m, s: releases(s, "dev").update({"analysis": {"intervall": "5m"}}),
            "releases.fraud-detection.analysis.intervall: unknown key 'intervall'; did you mean 'interval'?",
        ),
        (
            lambda m, s: s["prod"]["config"]["modelctl:environment"].update(
                {
                    "receivers": [
                        {
                            "name": "chat",
                            "severity": ["critical"],
                            "slack": {"channel": "#ml", "api_url_secret": "k"},
                        }
                    ]
                }
            ),
            "environment.receivers.0.severity: unknown key 'severity'; did you mean 'severities'?",
        ),
        (
            lambda m, s: s["prod"]["config"]["modelctl:environment"].update(
                {"requires": {"stack": "staging", "soaks": "1h"}}
            ),
            "environment.requires.soaks: unknown key 'soaks'; did you mean 'soak'?",
        ),
        (
            lambda m, s: fraud(m)["alerts"][0].update({"treshold": 1}),
            "alerts.0.treshold: unknown key 'treshold'; did you mean 'threshold'?",
        ),
        (
            lambda m, s: s["dev"]["config"].update({"modelctl:zzz": 1}),
            "config.modelctl:zzz: unknown key 'modelctl:zzz'; remove it; known keys: modelctl:environment, modelctl:feedbackStorePassword, modelctl:receiptKeys, modelctl:releases",
        ),
    ],
    ids=[
        "namespace-key",
        "environment",
        "namespace",
        "release",
        "analysis",
        "receiver",
        "requires",
        "model-file",
        "no-match",
    ],
)
def test_unknown_keys_anywhere_are_refused_with_a_did_you_mean(
    tmp_path: Path, edit: Callable[[dict[str, Any], dict[str, Any]], None], line: str
) -> None:
    models, stacks = docs()
    edit(models, stacks)
    assert any(line in found for found in errors_for(tmp_path, models, stacks)), line


def test_a_secret_no_receiver_names_is_an_unknown_key(tmp_path: Path) -> None:
    models, stacks = docs()
    config = stacks["prod"]["config"]
    config["modelctl:environment"]["receivers"] = [
        {"name": "chat", "slack": {"channel": "#ml", "api_url_secret": "slackWebhookUrl"}}
    ]
    config["modelctl:slackWebhookURL"] = {"secure": "v1:abc:def"}
    [line] = errors_for(tmp_path, models, stacks)
    assert (
        "config.modelctl:slackWebhookURL: unknown key 'modelctl:slackWebhookURL'; did you mean 'modelctl:slackWebhookUrl'?"
        in line
    )


def test_a_typo_in_the_releases_key_fails_check_instead_of_emptying_the_stack(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = repo / "Pulumi.staging.yaml"
    stack.write_text(stack.read_text().replace("modelctl:releases:", "modelctl:release:"))
    assert main(["-C", str(repo), "check"]) != 0
    assert "did you mean 'modelctl:releases'?" in capsys.readouterr().err


# ---------------------------------------------------------------- durations (Prometheus' grammar)

VALID_DURATIONS = ["0", "0s", "5m", "90m", "1h30m", "2w1d", "1y", "5ms", "1h30s5ms", "292y", "00m", "1h0m"]
# (duration, the spelling the error offers, or None where it offers none)
INVALID_DURATIONS = [
    ("30m1h", "1h30m"),
    ("1h1h", "2h"),
    ("1.5h", "1h30m"),
    ("1d2w", "2w1d"),
    ("90s1m", "2m30s"),
    ("1m1m1m", "3m"),
    ("5", None),
    ("", None),
    ("h", None),
    ("1 h", None),
    ("-5m", None),
    ("5M", None),
    ("1h30", None),
    ("300y", None),
]


@pytest.mark.parametrize("duration", [*VALID_DURATIONS, 0])
def test_prometheus_durations_are_accepted(duration: str | int) -> None:
    alert = ThresholdAlert.model_validate(
        {"name": "A", "metric": "m", "operator": "<", "threshold": 1, "for": duration}
    )
    assert alert.for_ == str(duration)


@pytest.mark.parametrize(("duration", "spelling"), INVALID_DURATIONS)
def test_other_durations_are_refused_with_the_right_spelling(duration: str, spelling: str | None) -> None:
    with pytest.raises(ValueError, match="Prometheus") as caught:
        duration_seconds(duration)
    if spelling:
        assert str(caught.value).endswith(f"; write {spelling}")
        assert duration_seconds(spelling) > 0


@pytest.mark.parametrize(
    ("duration", "seconds"), [("0", 0), ("1h30m", 5400), ("2w1d", 15 * 86400), ("1s5ms", 1.005)]
)
def test_duration_seconds(duration: str, seconds: float) -> None:
    assert duration_seconds(duration) == seconds


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool missing: run 'make tools'")
def test_the_schema_and_promtool_agree_on_every_duration(tmp_path: Path) -> None:
    """Prometheus itself is the reference: each duration is a rule's `for` that promtool checks."""
    for duration in [*VALID_DURATIONS, *(d for d, _ in INVALID_DURATIONS)]:
        rules = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0", "for": duration}]}]}
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
        result = subprocess.run(
            ["promtool", "check", "rules", "rules.yml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            duration_seconds(duration)
            ours = True
        except ValueError:
            ours = False
        assert ours == (result.returncode == 0), (duration, result.stdout + result.stderr)


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        (
            "models/fraud-detection/model.yaml:35: alerts.0.for",
            lambda m, s: fraud(m)["alerts"][0].update({"for": "30m1h"}),
        ),
        (
            "config.modelctl:environment.requires.soak",
            lambda m, s: s["prod"]["config"]["modelctl:environment"]["requires"].update({"soak": "30m1h"}),
        ),
        (
            "releases.fraud-detection.sticky.max_age",
            lambda m, s: releases(s, "dev").update({"sticky": {"max_age": "30m1h"}}),
        ),
        (
            "releases.fraud-detection.analysis.interval",
            lambda m, s: releases(s, "dev").update({"analysis": {"interval": "30m1h"}}),
        ),
    ],
    ids=["alert-for", "soak", "sticky-max-age", "analysis-interval"],
)
def test_every_duration_of_the_schema_uses_the_grammar(
    tmp_path: Path, where: str, edit: Callable[[dict[str, Any], dict[str, Any]], None]
) -> None:
    models, stacks = docs()
    edit(models, stacks)
    [line] = errors_for(tmp_path, models, stacks)
    assert f"{where}: '30m1h' is not a Prometheus duration" in line
    assert line.endswith("; write 1h30m")


@pytest.mark.parametrize("key", ["interval", "max_age"])
def test_intervals_and_cookie_lifetimes_must_be_positive(tmp_path: Path, key: str) -> None:
    models, stacks = docs()
    releases(stacks, "dev")["analysis" if key == "interval" else "sticky"] = {key: "0s"}
    [line] = errors_for(tmp_path, models, stacks)
    assert f"{key}: duration '0s' is zero; give a positive duration like 5m" in line


def test_an_alert_for_in_the_wrong_order_fails_check(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Case 04: `for: 30m1h` passed check and promtool refused the rendered rules."""
    model = repo / "models/fraud-detection/model.yaml"
    model.write_text(model.read_text().replace("for: 10m", "for: 30m1h"))
    assert main(["-C", str(repo), "check"]) != 0
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: models/fraud-detection/model.yaml:")
    assert "alerts.0.for: '30m1h' is not a Prometheus duration" in line
    assert line.endswith("write 1h30m")


# ---------------------------------------------------------------- route destinations


def test_a_header_override_to_an_undeployed_version_is_refused(tmp_path: Path) -> None:
    """Case 03: no Deployment and no subset for the override's version, so Istio answers 503."""
    models, stacks = docs()
    releases(stacks, "dev")["overrides"] = {"beta": "v1.0.0"}
    [line] = errors_for(tmp_path, models, stacks)
    assert line.startswith("Pulumi.dev.yaml:")
    assert (
        "config.modelctl:releases.fraud-detection.overrides.beta: header override 'beta' routes to v1.0.0"
        in line
    )
    assert "not deployed on dev" in line
    assert line.endswith(
        "deploy it at 0% with 'traffic: {v1.0.0: 0}' or route the override to one of: v1.1.0"
    )


def test_check_refuses_the_override_of_case_03(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`overrides.beta: v1.0.0` on dev, where only v1.1.0 is deployed, passed `check`."""
    stack = repo / "Pulumi.dev.yaml"
    doc = yaml.safe_load(stack.read_text())
    doc["config"]["modelctl:releases"]["fraud-detection"]["overrides"] = {"beta": "v1.0.0"}
    stack.write_text(yaml.safe_dump(doc))
    assert main(["-C", str(repo), "check", "--stack", "dev"]) != 0
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: Pulumi.dev.yaml:")
    assert "overrides.beta: header override 'beta' routes to v1.0.0 of fraud-detection" in line
    assert main(["-C", str(repo), "render", "--stack", "dev", "--out", str(repo / "out")]) != 0
    assert not (repo / "out").exists(), "nothing is rendered from a state check refuses"


@pytest.mark.parametrize(
    "release",
    [
        {"traffic": {"v1.0.0": 0, "v1.1.0": 100}, "overrides": {"beta": "v1.0.0"}},
        {
            "traffic": {"v1.1.0": 100},
            "shadow": {"version": "v1.0.0", "percent": 5},
            "overrides": {"beta": "v1.0.0"},
        },
        {"traffic": {"v1.0.0": 50, "v1.1.0": 50}, "overrides": {"old": "v1.0.0", "new": "v1.1.0"}},
    ],
    ids=["warm", "shadow", "serving"],
)
def test_overrides_to_deployed_versions_are_accepted(tmp_path: Path, release: dict[str, Any]) -> None:
    models, stacks = docs()
    stacks["dev"]["config"]["modelctl:releases"]["fraud-detection"] = release
    load_state(write_repo(tmp_path / "repo", models, stacks, git=False))


def test_requires_names_an_existing_stack(tmp_path: Path) -> None:
    models, stacks = docs()
    stacks["prod"]["config"]["modelctl:environment"]["requires"] = {"stack": "qa", "soak": "24h"}
    [line] = errors_for(tmp_path, models, stacks)
    assert "environment.requires.stack: requires stack 'qa', which does not exist" in line


def test_receiver_secrets_must_not_be_plaintext(tmp_path: Path) -> None:
    models, stacks = docs()
    config = stacks["prod"]["config"]
    config["modelctl:environment"]["receivers"] = [
        {"name": "chat", "slack": {"channel": "#ml", "api_url_secret": "slackUrl"}}
    ]
    config["modelctl:slackUrl"] = "https://hooks.slack.com/services/T/B/X"
    [line] = errors_for(tmp_path, models, stacks)
    assert (
        "secret modelctl:slackUrl is stored in plain text; run 'pulumi config set --secret modelctl:slackUrl'"
        in line
    )


def test_encrypted_secret_is_accepted(tmp_path: Path) -> None:
    models, stacks = docs()
    config = stacks["prod"]["config"]
    config["modelctl:environment"]["receivers"] = [
        {"name": "chat", "slack": {"channel": "#ml", "api_url_secret": "slackUrl"}}
    ]
    config["modelctl:slackUrl"] = {"secure": "v1:abc:def"}
    state = load_state(write_repo(tmp_path / "repo", models, stacks, git=False))
    assert state.stacks["prod"].secret_keys == {"slackUrl"}


def test_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    root = write_repo(tmp_path / "repo", git=False)
    (root / "Pulumi.dev.yaml").write_text("config:\n  modelctl:environment: [unclosed\n")
    with pytest.raises(UserError, match=r"^Pulumi.dev.yaml: invalid YAML \(line \d+\)"):
        load_state(root)


def test_cli_reports_every_error_on_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models, stacks = docs()
    releases(stacks, "staging")["traffic"] = {"v1.0.0": 80, "v1.1.0": 10}
    fraud(models)["versions"]["v1.0.0"]["artifact"]["format"] = "pickle"
    root = write_repo(tmp_path / "repo", models, stacks, git=False)
    assert main(["-C", str(root), "check"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: models/fraud-detection/model.yaml:")
    assert lines[1].startswith("error: Pulumi.staging.yaml:")
    assert "Traceback" not in err


def test_check_json_reports_success(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", str(repo), "check", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ok": true' in out
    assert '"versions": 2' in out


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [("v1.0.0", "v1.0.1"), ("v1.0.0-rc.1", "v1.0.0"), ("v1.0.0-rc.2", "v1.0.0-rc.10"), ("v1.9.0", "v1.10.0")],
)
def test_version_precedence(smaller: str, larger: str) -> None:
    assert Version(smaller) < Version(larger)


def test_version_bump() -> None:
    assert Version("v1.2.3").bump("minor").name == "v1.3.0"
    assert Version("v1.2.3-rc.1").bump("patch").name == "v1.2.3"
    assert Version("v1.2.3").bump("major").name == "v2.0.0"


def test_feature_names_are_unique(tmp_path: Path) -> None:
    models, stacks = docs()
    features = fraud(models)["signature"]["features"]
    features.append(dict(features[0]))
    [line] = errors_for(tmp_path, models, stacks)
    assert "signature.features: feature names repeat: amount; give each a unique name" in line


# ---------------------------------------------------------------- credentials in plain text

SLACK_HOOK = "https://hooks.slack.com/services/T0000000/B0000000/XXXXXXXXXXXXXXXXXXXXXXXX"


def _env(stacks: dict[str, Any]) -> dict[str, Any]:
    environment: dict[str, Any] = stacks["prod"]["config"]["modelctl:environment"]
    return environment


@pytest.mark.parametrize(
    ("edit", "file", "key", "what"),
    [
        (
            lambda m, s: fraud(m).update(description=f"alerts go to {SLACK_HOOK}"),
            "models/fraud-detection/model.yaml",
            "description",
            "a Slack webhook URL",
        ),
        (
            lambda m, s: fraud(m)["versions"]["v1.0.0"]["params"].update(api_key="0123456789abcdef"),
            "models/fraud-detection/model.yaml",
            "versions.v1.0.0.params.api_key",
            "a credential (key 'api_key')",
        ),
        (
            lambda m, s: _env(s).update(
                receivers=[
                    {
                        "name": "pager",
                        "webhook": {"url": "https://pager.example.com/x?token=0123456789abcdef"},
                    }
                ]
            ),
            "Pulumi.prod.yaml",
            "config.modelctl:environment.receivers[0].webhook.url",
            "a URL with a token",
        ),
        (
            lambda m, s: _env(s).update(dvc_remote="https://user:hunter22@dvc.example.com/store"),
            "Pulumi.prod.yaml",
            "config.modelctl:environment.dvc_remote",
            "a URL with a password",
        ),
        (
            lambda m, s: _env(s).update(service_account_annotations={"aws-key": "AKIAIOSFODNN7EXAMPLE"}),
            "Pulumi.prod.yaml",
            "config.modelctl:environment.service_account_annotations.aws-key",
            "an AWS access key id",
        ),
        (
            lambda m, s: s["prod"]["config"].update(
                {"kubernetes:kubeconfig": "-----BEGIN EC PRIVATE KEY-----\nx"}
            ),
            "Pulumi.prod.yaml",
            "config.kubernetes:kubeconfig",
            "a private key",
        ),
        (
            lambda m, s: s["prod"]["config"].update({"grafana:auth": "Bearer abcdefghijklmnopqrstuvwxyz"}),
            "Pulumi.prod.yaml",
            "config.grafana:auth",
            "an HTTP credential",
        ),
    ],
    ids=[
        "model-description",
        "model-params",
        "webhook-url",
        "dvc-remote",
        "annotation",
        "other-namespace",
        "bearer",
    ],
)
def test_credentials_in_the_desired_state_are_refused(
    tmp_path: Path, edit: Callable[[dict[str, Any], dict[str, Any]], None], file: str, key: str, what: str
) -> None:
    models, stacks = docs()
    edit(models, stacks)
    [line] = errors_for(tmp_path, models, stacks)
    assert line.startswith(f"{file}:")
    assert f" {key}: this looks like {what}, written in plain text; " in line
    assert "hunter22" not in line
    assert "AKIA" not in line


def test_secret_references_and_encrypted_values_are_no_credentials(tmp_path: Path) -> None:
    models, stacks = docs()
    _env(stacks)["receivers"] = [
        {
            "name": "mail",
            "email": {
                "to": "a@example.com",
                "from": "b@example.com",
                "smarthost": "smtp.example.com:587",
                "auth_password_secret": "smtpPassword",
            },
        },
        {
            "name": "pager",
            "webhook": {"url": "https://pager.example.com/hook", "credentials_secret": "pagerToken"},
        },
    ]
    stacks["prod"]["config"]["modelctl:smtpPassword"] = {"secure": "v1:abc"}
    stacks["prod"]["config"]["modelctl:pagerToken"] = {"secure": "v1:def"}
    stacks["prod"]["config"]["aws:secretKey"] = {"secure": "v1:ghi"}
    load_state(write_repo(tmp_path / "repo", models, stacks, git=False))


def test_check_refuses_a_slack_webhook_in_a_webhook_receiver(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = repo / "Pulumi.prod.yaml"
    doc = yaml.safe_load(stack.read_text())
    doc["config"]["modelctl:environment"]["receivers"] = [{"name": "chat", "webhook": {"url": SLACK_HOOK}}]
    stack.write_text(yaml.safe_dump(doc))
    assert main(["-C", str(repo), "check"]) != 0
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: Pulumi.prod.yaml:")
    assert "config.modelctl:environment.receivers[0].webhook.url: this looks like a Slack webhook URL" in line
    assert SLACK_HOOK not in line
