"""Every invariant of the desired state, as the one error line a user sees."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from modelctl.cli import main
from modelctl.core.errors import UserError, UserErrors, as_list
from modelctl.core.schema import Version
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
    assert line.startswith("Pulumi.dev.yaml: config.modelctl:releases.fraud-detection.traffic.v9.0.0:")
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
    assert any("shadow.version: version v2.0.0" in line for line in lines), lines
    assert any("overrides.beta: version v3.0.0" in line for line in lines), lines


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


def test_misspelt_keys_are_refused(tmp_path: Path) -> None:
    models, stacks = docs()
    releases(stacks, "dev")["shadoww"] = {"version": "v1.0.0", "percent": 5}
    [line] = errors_for(tmp_path, models, stacks)
    assert (
        "releases.fraud-detection.shadoww: extra inputs are not permitted; remove it or check its spelling"
        in line
    )


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
