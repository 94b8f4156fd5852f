"""Well-formed desired-state documents for tests, and a throwaway git repository holding them."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from modelctl.core import yamlio
from modelctl.core.trusted import ALLOW_LIST_FILE

FEATURES = ["amount", "hour", "merchant_risk", "distance_km"]
# The repository's own reviewed allow-list of trusted types, which test repositories hold too.
ALLOW_LIST = Path(__file__).resolve().parents[1] / ALLOW_LIST_FILE


def fake_hex(seed: str, length: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def version_record(model: str, version: str, **metrics: float) -> dict[str, Any]:
    values = {"accuracy": 0.97, "precision": 0.9, "recall": 0.8, "f1": 0.85, "auc_roc": 0.97}
    values.update(metrics)
    return {
        "artifact": {
            "path": f"artifacts/{model}/model.skops",
            "md5": fake_hex(f"{model}{version}md5", 32),
            "sha256": fake_hex(f"{model}{version}sha", 64),
            "size": 1234,
            "format": "skops",
            "trusted_types": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
        },
        "profile": {
            "path": f"artifacts/{model}/profile.npz",
            "md5": fake_hex(f"{model}{version}pmd5", 32),
            "sha256": fake_hex(f"{model}{version}psha", 64),
        },
        "metrics": values,
        "params": {"learning_rate": 0.1},
        "source_commit": fake_hex(f"{model}{version}commit", 40),
        "data_md5": fake_hex(f"{model}{version}data", 32) + ".dir",
        "created_at": "2026-11-01T12:00:00Z",
        "status": "active",
    }


def model_doc(
    name: str = "fraud-detection", versions: tuple[str, ...] = ("v1.0.0", "v1.1.0")
) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} example",
        "owner": "ml-team@example.com",
        "signature": {
            "features": [{"name": f, "type": "float", "min": 0.0, "max": 1000.0} for f in FEATURES]
        },
        "output": {"classes": ["legit", "fraud"], "positive_class": "fraud"},
        "gates": {"auc_roc": 0.95, "recall": 0.75},
        "alerts": [
            {
                "name": "LowLiveAccuracy",
                "metric": "model_accuracy",
                "operator": "<",
                "threshold": 0.85,
                "for": "10m",
                "severity": "critical",
            }
        ],
        "versions": {v: version_record(name, v) for v in versions},
    }


def stack_doc(
    traffic: dict[str, int], production: bool = False, model: str = "fraud-detection", **env: Any
) -> dict[str, Any]:
    environment: dict[str, Any] = {
        "namespace": "models-test",
        "image": "ghcr.io/acme/modelctl-serving:0.1.0",
        "dvc_remote": "s3://acme-ml-artifacts/dvc",
        "production": production,
    }
    if production:  # production pins every image by digest, the feedback store's too
        environment["feedback_store"] = {"image": STORE_IMAGE}
    environment.update(env)
    return {
        "config": {
            "modelctl:environment": environment,
            "modelctl:releases": {model: {"traffic": dict(traffic)}},
        }
    }


def default_docs() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    models = {"fraud-detection": model_doc()}
    stacks = {
        "dev": stack_doc({"v1.1.0": 100}),
        "staging": stack_doc({"v1.0.0": 90, "v1.1.0": 10}),
        "prod": stack_doc(
            {"v1.0.0": 100},
            production=True,
            requires={"stack": "staging", "soak": "24h"},
            image="ghcr.io/acme/modelctl-serving:0.1.0@sha256:" + fake_hex("image", 64),
        ),
    }
    return models, stacks


def write_repo(
    root: Path,
    models: dict[str, dict[str, Any]] | None = None,
    stacks: dict[str, dict[str, Any]] | None = None,
    git: bool = True,
) -> Path:
    """A repository with these documents (the defaults if none given), committed when `git`."""
    default_models, default_stacks = default_docs()
    models = copy.deepcopy(default_models if models is None else models)
    stacks = copy.deepcopy(default_stacks if stacks is None else stacks)
    root.mkdir(parents=True, exist_ok=True)
    (root / "Pulumi.yaml").write_text("name: modelctl\nmain: infra/\nruntime: python\n")
    (root / "models").mkdir(exist_ok=True)
    (root / ALLOW_LIST_FILE).write_text(ALLOW_LIST.read_text(encoding="utf-8"), encoding="utf-8")
    for name, doc in models.items():
        yamlio.dump_file(root / "models" / name / "model.yaml", doc)
    for name, doc in stacks.items():
        yamlio.dump_file(root / f"Pulumi.{name}.yaml", doc)
    if git:
        run_git(root, "init", "-q", "-b", "main")
        run_git(root, "add", "-A")
        run_git(root, "commit", "-q", "-m", "initial state")
    return root


def run_git(root: Path, *args: str) -> str:
    env_args = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run(
        ["git", *env_args, *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def commit_at(root: Path, when: str, message: str, *paths: str) -> None:
    """Commit these paths with author and committer dates `when` (ISO 8601), for time-based rules."""
    env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    git_args = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", *git_args, "add", "--", *paths], cwd=root, check=True, capture_output=True)
    subprocess.run(
        ["git", *git_args, "commit", "-q", "-m", message, "--", *paths],
        cwd=root,
        check=True,
        capture_output=True,
        env=env,
    )


def redate_head(root: Path, when: str) -> None:
    """Give HEAD (committed now by write_repo) the author and committer date `when`, so commits
    dated after it with `commit_at` follow it on the branch."""
    env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    git_args = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(
        ["git", *git_args, "commit", "-q", "--amend", "--no-edit", "--reset-author"],
        cwd=root,
        check=True,
        capture_output=True,
        env=env,
    )


PROD_IMAGE = "ghcr.io/acme/modelctl-serving:0.1.0@sha256:" + fake_hex("image", 64)
STORE_IMAGE = "ghcr.io/acme/redis:7.0.15-alpine@sha256:" + fake_hex("store image", 64)


# The in-cluster canary analysis job's settings (full_docs' dev stack).
ANALYSIS_JOB = {
    "schedule": "*/10 * * * *",
    "image": "ghcr.io/acme/modelctl-analysis:0.1.0",
    "repository": "git@github.com:acme/models.git",
    "known_hosts": "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "git_cidrs": ["140.82.112.0/20", "192.30.252.0/22"],
    "deploy_key_secret": "analysisDeployKey",
}


def full_docs() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Documents using every release and environment feature: two models, a warm rollback version,
    shadow, sticky sessions, header overrides, all receiver kinds, ingress and monitoring install."""
    fraud = model_doc(versions=("v1.0.0", "v1.1.0", "v1.2.0"))
    fraud["gates"]["accuracy"] = 0.9
    fraud["alerts"].append(
        {"name": "HighFraudScore", "metric": "model_prediction_score_sum", "operator": ">", "threshold": 1e6}
    )
    churn = model_doc("churn", versions=("v2.0.0", "v2.1.0-rc.1"))
    receivers = [
        {
            "name": "oncall-email",
            "severities": ["critical"],
            "email": {
                "to": "oncall@example.com",
                "from": "alerts@example.com",
                "smarthost": "smtp.example.com:587",
                "auth_username": "alerts",
                "auth_password_secret": "smtpPassword",
            },
        },
        {"name": "ml-slack", "slack": {"channel": "#ml-alerts", "api_url_secret": "slackUrl"}},
        {
            "name": "pager",
            "webhook": {"url": "https://pager.example.com/hook", "credentials_secret": "pagerToken"},
        },
    ]
    staging = stack_doc({"v1.1.0": 90, "v1.2.0": 10}, receivers=receivers[1:2])
    staging["config"]["modelctl:releases"]["fraud-detection"].update(
        {"sticky": {"cookie": "fraud-version", "max_age": "1h"}, "overrides": {"canary": "v1.2.0"}}
    )
    staging["config"]["modelctl:releases"]["churn"] = {
        "traffic": {"v2.0.0": 100},
        "shadow": {"version": "v2.1.0-rc.1", "percent": 25},
    }
    staging["config"]["modelctl:slackUrl"] = {"secure": "v1:c2xhY2s="}
    prod = stack_doc(
        {"v1.0.0": 0, "v1.1.0": 100},
        production=True,
        requires={"stack": "staging", "soak": "24h"},
        image=PROD_IMAGE,
        namespace="models-prod",
        receivers=receivers,
        monitoring={"install": True},
        ingress={"gateway": "istio-system/public", "domain": "models.example.com"},
    )
    prod["config"]["modelctl:releases"]["fraud-detection"]["shadow"] = {"version": "v1.2.0", "percent": 10}
    prod["config"]["modelctl:releases"]["fraud-detection"]["prediction_log"] = {"sample": 0.1}
    prod["config"]["modelctl:releases"]["churn"] = {"traffic": {"v2.0.0": 100}}
    for key in ("smtpPassword", "slackUrl", "pagerToken"):
        prod["config"][f"modelctl:{key}"] = {"secure": "v1:" + fake_hex(key, 24)}
    dev = stack_doc(
        {"v1.2.0": 100},
        namespace="models-dev",
        monitoring={"prometheus_url": "http://prometheus-operated.monitoring:9090"},
        analysis=ANALYSIS_JOB,
    )
    dev["config"]["modelctl:analysisDeployKey"] = {"secure": "v1:" + fake_hex("analysisDeployKey", 24)}
    return {"fraud-detection": fraud, "churn": churn}, {"dev": dev, "staging": staging, "prod": prod}
