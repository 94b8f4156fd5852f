"""`modelctl canary analyze` against a real Prometheus scraping a real exposition endpoint: the
snapshot it commits, the decision applied as one commit, the exit codes, and replay. The
exposition serves the model servers' metrics and, as a cluster's Istio proxies would, Istio's
standard metrics at the callers' side (reporter="source"): the stack's mesh (the default)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from modelctl import api
from modelctl.core import contract
from modelctl.core.analysis.snapshot import Arms, canary_arms
from modelctl.core.schema import Release
from modelctl.repo import prometheus as prometheus_api
from modelctl.repo.state import read_state
from serving.metrics import LATENCY_BUCKETS, SCORE_BUCKETS
from tests.conftest import Cli
from tests.factories import run_git
from tests.promstack import ISTIO, ISTIO_BUCKETS, NAMESPACE
from tests.test_serving_helpers import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed (make tools)"
)

MODEL = "fraud-detection"
STACK = "staging"
SCRAPE_SECONDS = 1
WAIT_SECONDS = 30


@dataclass
class Exposition:
    """The server's metrics (the contract's names and labels) for two versions, served over HTTP."""

    registry: CollectorRegistry
    url: str
    requests: Counter
    duration: Histogram
    score: Histogram
    feedback: Counter
    mesh_requests: Counter
    mesh_duration: Histogram
    # The namespaces whose callers' proxies report these requests (one per stack fed alike).
    namespaces: tuple[str, ...] = (NAMESPACE,)

    def serve(self, version: str, n: int, *, error_rate: float, slower: float = 1.0, seed: int = 0) -> None:
        """Record `n` requests of `version` as the server would, and as the callers' proxies would."""
        rng = np.random.default_rng(seed)
        errors = round(n * error_rate)
        labels = {"model": MODEL, "version": version}
        self.requests.labels(**labels, code="200").inc(n - errors)
        self.requests.labels(**labels, code="500").inc(errors)
        self.called(version, n - errors, "200")
        self.called(version, errors, "500")
        for seconds in rng.lognormal(np.log(0.01 * slower), 0.5, size=n):
            self.duration.labels(**labels).observe(seconds)
            for namespace in self.namespaces:
                self.mesh_duration.labels(**ISTIO.matchers(namespace, MODEL, version)).observe(seconds * 1000)
        for score in rng.beta(2, 5, size=n):
            self.score.labels(**labels).observe(score)
        wrong = rng.random(n // 10) < 0.05
        self.feedback.labels(**labels, actual="fraud", predicted="fraud").inc(int((~wrong).sum()))
        self.feedback.labels(**labels, actual="fraud", predicted="legit").inc(int(wrong.sum()))

    def called(self, version: str, n: int, code: str) -> None:
        """Record `n` requests of `version` answered `code` at the callers' proxies only (a request
        that never reached a server: refused, reset, timed out)."""
        for namespace in self.namespaces:
            self.mesh_requests.labels(**ISTIO.matchers(namespace, MODEL, version), response_code=code).inc(n)


@pytest.fixture
def exposition() -> Iterator[Exposition]:
    registry = CollectorRegistry()
    served = contract.SERVED_BY
    requests = Counter(
        contract.REQUESTS.name, contract.REQUESTS.help, contract.REQUESTS.label_names, registry=registry
    )
    duration = Histogram(
        contract.DURATION.name, contract.DURATION.help, served, registry=registry, buckets=LATENCY_BUCKETS
    )
    score = Histogram(
        contract.SCORE.name, contract.SCORE.help, served, registry=registry, buckets=SCORE_BUCKETS
    )
    feedback = Counter(
        contract.FEEDBACK.name,
        contract.FEEDBACK.help,
        (*served, *contract.FEEDBACK.labels),
        registry=registry,
    )
    istio = (*ISTIO.matchers(NAMESPACE, MODEL, "v1.0.0"), "response_code")
    mesh_requests = Counter(
        ISTIO.requests.removesuffix("_total"), "Istio's requests", istio, registry=registry
    )
    mesh_duration = Histogram(
        ISTIO.duration, "Istio's request durations", istio[:-1], registry=registry, buckets=ISTIO_BUCKETS
    )
    for version in ("v1.0.0", "v1.1.0"):
        # Series exist at zero before any traffic, as the server's do once a version loads.
        requests.labels(MODEL, version, "200")
        requests.labels(MODEL, version, "500")
        duration.labels(MODEL, version)
        score.labels(MODEL, version)
        for predicted in ("fraud", "legit"):
            feedback.labels(MODEL, version, "fraud", predicted)
    server, thread = start_http_server(0, "127.0.0.1", registry)
    try:
        yield Exposition(
            registry,
            f"127.0.0.1:{server.server_port}",
            requests,
            duration,
            score,
            feedback,
            mesh_requests,
            mesh_duration,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path, exposition: Exposition) -> Iterator[str]:
    """A real Prometheus on a free port scraping the exposition every second; stopped by pid."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {SCRAPE_SECONDS}s, evaluation_interval: {SCRAPE_SECONDS}s}}\n"
        f"scrape_configs:\n  - job_name: models\n    static_configs: [{{targets: ['{exposition.url}']}}]\n"
    )
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, 'up{job="models"}', lambda value: value == 1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_for(url: str, promql: str, ok: object) -> None:
    """Poll an instant query until its first sample satisfies `ok` (bounded)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            result = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()["data"][
                "result"
            ]
        except (httpx.HTTPError, KeyError, ValueError):
            result = []
        if result and ok(float(result[0]["value"][1])):  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never answered {promql} as expected")


def scraped(url: str, total: int) -> None:
    """Wait until Prometheus holds every request fed so far, then one more scrape."""
    wait_for(url, f'sum({contract.REQUESTS.name}{{model="{MODEL}"}})', lambda value: value >= total)
    time.sleep(SCRAPE_SECONDS * 1.5)


@pytest.fixture
def canary_repo(repo: Path) -> Path:
    """staging fully on v1.0.0, then a canary of v1.1.0 at the first step (5%), both committed;
    a step may follow one second after the one before (analysis.interval: 1s)."""
    stack = repo / f"Pulumi.{STACK}.yaml"
    stack.write_text(
        stack.read_text()
        .replace("v1.0.0: 90\n", "v1.0.0: 100\n")
        .replace("        v1.1.0: 10\n", "      analysis: {interval: 1s}\n")
    )
    run_git(repo, "commit", "-q", "-am", "staging on v1.0.0")
    api.canary(repo, MODEL, "v1.1.0", stack=STACK)
    return repo


def analyze(cli: Cli, root: Path, url: str, *flags: str) -> tuple[int, list[dict[str, object]]]:
    code, out, err = cli(root, "canary", "analyze", "--stack", STACK, "--prometheus", url, "--json", *flags)
    assert "Traceback" not in err
    return code, json.loads(out)["analyses"]


def committed_files(root: Path) -> list[str]:
    return run_git(root, "show", "--name-only", "--format=", "HEAD").split()


def test_a_healthy_canary_steps_in_one_commit_with_its_snapshot(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli
) -> None:
    exposition.serve("v1.1.0", 6000, error_rate=0.005, seed=1)
    exposition.serve("v1.0.0", 54000, error_rate=0.005, seed=2)
    scraped(prometheus, 60000)
    code, results = analyze(cli, canary_repo, prometheus)
    assert code == 0, [r["decision"] for r in results]
    [result] = results
    assert result["outcome"] == "step"
    snapshot_path = str(result["snapshot"])
    assert snapshot_path.startswith(f"analysis/{STACK}/{MODEL}/")
    assert sorted(committed_files(canary_repo)) == sorted([snapshot_path, f"Pulumi.{STACK}.yaml"])
    assert read_state(canary_repo).stack(STACK).config.releases[MODEL].traffic == {"v1.0.0": 90, "v1.1.0": 10}
    message = run_git(canary_repo, "log", "-1", "--format=%B")
    assert message.startswith(f"canary analyze step: {MODEL} v1.1.0 at 10% on {STACK}")
    assert f"Analysis-Snapshot: {snapshot_path}" in message
    assert "errors: canary error rate is within" in message.splitlines()[2]
    snapshot = json.loads((canary_repo / snapshot_path).read_text())
    assert snapshot["source"]["prometheus"] == prometheus
    queries = snapshot["source"]["queries"]
    assert queries["requests_in_window/end"].startswith("last_over_time(model_requests_total")
    assert queries["istio_requests_in_window/end"].startswith(
        'last_over_time(istio_requests_total{reporter="source",destination_service_namespace="models-test"'
    )
    assert snapshot["format"] == 2
    assert snapshot["sources"]["errors"] == snapshot["sources"]["latency_seconds"] == "istio"
    assert snapshot["sources"]["feedback"] == "server"
    assert snapshot["canary"]["server"]["requests"] == 6000
    # Exactly what was fed (PromQL's increase() would extrapolate the sampled span to the window).
    assert (snapshot["canary"]["requests"], snapshot["canary"]["errors"]) == (6000, 30)
    assert snapshot["baseline"]["requests"] == 54000
    assert sum(cell["count"] for cell in snapshot["canary"]["feedback"]) == 600
    code, out, err = cli(canary_repo, "judge", "--replay", "HEAD")
    assert code == 0, err
    assert "matches" in out.splitlines()[0]
    # A commit whose recorded decision is not what its snapshot gives: a finding (2).
    forged = message.replace("Judge-Action: promote", "Judge-Action: rollback")
    run_git(canary_repo, "commit", "-q", "--allow-empty", "-m", forged)
    code, out, _ = cli(canary_repo, "judge", "--replay", "HEAD")
    assert code == 2
    assert "DIFFERS (committed rollback" in out.splitlines()[0]


def test_counts_stay_exact_across_a_restarted_servers_reset_counters(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli
) -> None:
    """A container restarted in its pod keeps its series and counts from 0 again: the count adds
    its increases sample by sample (PromQL's increase() would extrapolate them)."""
    exposition.serve("v1.1.0", 6000, error_rate=0.005, seed=1)
    exposition.serve("v1.0.0", 54000, error_rate=0.005, seed=2)
    scraped(prometheus, 60000)
    exposition.registry.unregister(exposition.requests)
    exposition.requests = Counter(
        contract.REQUESTS.name, contract.REQUESTS.help, contract.REQUESTS.label_names,
        registry=exposition.registry,
    )  # fmt: skip
    exposition.serve("v1.1.0", 1000, error_rate=0.005, seed=3)
    exposition.serve("v1.0.0", 9000, error_rate=0.005, seed=4)
    wait_for(prometheus, f'sum({contract.REQUESTS.name}{{model="{MODEL}"}})', lambda value: value == 10000)
    time.sleep(SCRAPE_SECONDS * 1.5)
    code, [result] = analyze(cli, canary_repo, prometheus)
    assert code == 0, result
    snapshot = json.loads((canary_repo / str(result["snapshot"])).read_text())
    assert (snapshot["canary"]["requests"], snapshot["canary"]["errors"]) == (7000, 35)
    assert (snapshot["baseline"]["requests"], snapshot["baseline"]["errors"]) == (63000, 315)


def test_a_canary_held_by_a_rollback_during_the_analysis_is_never_stepped(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    exposition.serve("v1.1.0", 6000, error_rate=0.005, seed=1)
    exposition.serve("v1.0.0", 54000, error_rate=0.005, seed=2)
    scraped(prometheus, 60000)
    query_all = prometheus_api.query_all

    def rolled_back_meanwhile(*args: object, **kwargs: object) -> object:
        # Another writer rolls the canary back while Prometheus answers this analysis.
        answers = query_all(*args, **kwargs)  # type: ignore[arg-type]
        api.rollback(canary_repo, MODEL, stack=STACK)
        return answers

    monkeypatch.setattr(prometheus_api, "query_all", rolled_back_meanwhile)
    head = run_git(canary_repo, "rev-parse", "HEAD")
    code, out, err = cli(canary_repo, "canary", "analyze", "--stack", STACK, "--prometheus", prometheus)
    assert code == 1, out
    [error] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "v1.1.0 of fraud-detection is held on staging" in error
    assert "Traceback" not in err
    # Only the rollback was committed; the analysis wrote nothing.
    assert run_git(canary_repo, "rev-parse", "HEAD^") == head
    assert read_state(canary_repo).stack(STACK).config.releases[MODEL].traffic == {"v1.0.0": 100}
    assert run_git(canary_repo, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_failing_canary_is_rolled_back_and_replays(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli
) -> None:
    exposition.serve("v1.1.0", 2000, error_rate=0.08, seed=3)
    exposition.serve("v1.0.0", 38000, error_rate=0.01, seed=4)
    scraped(prometheus, 40000)
    code, [result] = analyze(cli, canary_repo, prometheus)
    assert code == 2  # a finding: the exit code convention's (modelctl.cli)
    assert result["outcome"] == "rollback"
    assert read_state(canary_repo).stack(STACK).config.releases[MODEL].traffic == {"v1.0.0": 100}
    assert str(result["snapshot"]) in committed_files(canary_repo)
    code, out, _ = cli(canary_repo, "judge", "--replay", "HEAD", "--json")
    assert code == 0
    assert json.loads(out)["matches"] is True
    assert json.loads(out)["decision"]["action"] == "rollback"


def test_a_canary_failing_at_the_mesh_is_rolled_back_at_the_first_look_on_what_callers_got(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli
) -> None:
    """The canary's server died after 40 requests: its next 120 failed at the callers' proxies
    (503, never reaching it). The servers alone counted 40 good requests of the 500 needed."""
    exposition.serve("v1.1.0", 40, error_rate=0.0, seed=7)
    exposition.called("v1.1.0", 120, "503")
    exposition.serve("v1.0.0", 3000, error_rate=0.0, seed=8)
    scraped(prometheus, 3040)
    code, [result] = analyze(cli, canary_repo, prometheus)
    assert code == 2, result
    assert result["outcome"] == "rollback"
    [reason] = result["decision"]["reasons"]  # type: ignore[index]
    assert reason.startswith("errors: the canary's error rate is higher than the baseline's (75.00% vs 0.00%")
    snapshot = json.loads((canary_repo / str(result["snapshot"])).read_text())
    assert (snapshot["canary"]["requests"], snapshot["canary"]["errors"]) == (160, 120)
    assert (snapshot["canary"]["server"]["requests"], snapshot["canary"]["server"]["errors"]) == (40, 0)
    assert read_state(canary_repo).stack(STACK).config.releases[MODEL].traffic == {"v1.0.0": 100}


def test_a_canary_the_mesh_never_reaches_is_rolled_back_as_unreachable(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli
) -> None:
    exposition.serve("v1.0.0", 5000, error_rate=0.01, seed=5)
    scraped(prometheus, 5000)
    code, [result] = analyze(cli, canary_repo, prometheus)
    assert code == 2, result
    [reason] = result["decision"]["reasons"]  # type: ignore[index]
    assert reason.startswith("unreachable: the mesh sent the canary none of its 5% share of requests")


def test_no_traffic_at_all_holds_with_a_warning_and_commits_only_when_recorded(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli
) -> None:
    time.sleep(SCRAPE_SECONDS * 2.5)  # scraped: every series at zero
    head = run_git(canary_repo, "rev-parse", "HEAD")
    code, [result] = analyze(cli, canary_repo, prometheus)
    assert code == 3
    assert result["outcome"] == "hold"
    assert any("no traffic" in w for w in result["decision"]["warnings"])  # type: ignore[index]
    assert run_git(canary_repo, "rev-parse", "HEAD") == head
    assert not (canary_repo / "analysis").exists()
    # Nothing committed, so nothing names a snapshot path; counts are whole requests.
    assert result["snapshot"] is None
    assert "analysis/" not in str(result["message"])
    _, out, _ = cli(canary_repo, "canary", "analyze", "--stack", STACK, "--prometheus", prometheus)
    assert "analysis/" not in out
    assert "snapshot not committed on a hold; --record commits it" in out.splitlines()[0]
    assert "not enough data: canary has 0 of the 500 requests needed" in out
    code, [result] = analyze(cli, canary_repo, prometheus, "--record")
    assert code == 3
    assert committed_files(canary_repo) == [result["snapshot"]]
    assert run_git(canary_repo, "log", "-1", "--format=%s").startswith("canary analyze hold:")


def test_stacks_without_a_canary_are_skipped_without_a_prometheus(repo: Path, cli: Cli) -> None:
    """prod and staging have no Prometheus setting; with no canary anywhere every stack is
    skipped, in one line, and nothing is queried."""
    stack = repo / f"Pulumi.{STACK}.yaml"
    stack.write_text(
        stack.read_text().replace("v1.0.0: 90\n", "v1.0.0: 100\n").replace("      v1.1.0: 10\n", "")
    )
    run_git(repo, "commit", "-q", "-am", "staging on v1.0.0")
    head = run_git(repo, "rev-parse", "HEAD")
    code, out, err = cli(repo, "canary", "analyze")
    assert code == 0, err
    assert out.strip() == "skipped dev, prod, staging: no release in a canary state"
    code, out, err = cli(repo, "canary", "analyze", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "analyses": [],
        "skipped": [
            {"stack": s, "reason": "no release in a canary state"} for s in ("dev", "prod", "staging")
        ],
    }
    assert run_git(repo, "rev-parse", "HEAD") == head


def test_a_wrong_prometheus_url_is_one_line_error(canary_repo: Path, cli: Cli) -> None:
    port = free_port()
    code, _, err = cli(
        canary_repo, "canary", "analyze", "--stack", STACK, "--prometheus", f"http://127.0.0.1:{port}"
    )
    assert code == 1
    [error] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Prometheus did not answer" in error
    assert "Traceback" not in err


def test_analyze_waits_for_the_repository_lock_then_refuses_writing_nothing(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli
) -> None:
    exposition.serve("v1.0.0", 5000, error_rate=0.01, seed=5)
    scraped(prometheus, 5000)
    head = run_git(canary_repo, "rev-parse", "HEAD")
    # Another process holds the lock (within one process it is re-entrant).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from modelctl.repo.transaction import repository_lock\n"
            "with repository_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()",
            str(canary_repo),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        code, out, err = cli(
            canary_repo,
            "canary",
            "analyze",
            "--stack",
            STACK,
            "--prometheus",
            prometheus,
            "--record",
            "--lock-timeout",
            "0.5",
        )
    finally:
        holder.communicate(timeout=30)
    assert code == 1, out
    [error] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "another modelctl command is changing this repository" in error
    assert run_git(canary_repo, "rev-parse", "HEAD") == head
    assert not (canary_repo / "analysis").exists()


@pytest.mark.parametrize(
    ("traffic", "rollback_to", "expected"),
    [
        ({"v1.1.0": 95, "v1.0.0": 5}, "v1.1.0", Arms("v1.1.0", "v1.0.0", 95, 5)),
        # At 50% the recorded start decides, whichever version is older.
        ({"v1.1.0": 50, "v1.0.0": 50}, "v1.1.0", Arms("v1.1.0", "v1.0.0", 50, 50)),
        ({"v1.0.0": 50, "v1.1.0": 50}, "v1.0.0", Arms("v1.0.0", "v1.1.0", 50, 50)),
        ({"v1.0.0": 50, "v1.1.0": 50}, None, Arms("v1.0.0", "v1.1.0", 50, 50)),
    ],
)
def test_the_baseline_is_the_version_the_release_started_from(
    traffic: dict[str, int], rollback_to: str | None, expected: Arms
) -> None:
    release = Release.model_validate({"traffic": traffic, "rollback_to": rollback_to})
    assert canary_arms(release) == expected


def test_case_15_a_step_is_not_taken_before_the_last_has_run_for_its_interval(
    canary_repo: Path, prometheus: str, exposition: Exposition, cli: Cli
) -> None:
    """Case 15: staging's `interval: 10m`; a healthy canary with 100,000 requests seconds after its
    step holds, saying how long is left, and its recorded snapshot replays to the same hold."""
    stack = canary_repo / f"Pulumi.{STACK}.yaml"
    stack.write_text(stack.read_text().replace("analysis: {interval: 1s}", "analysis: {interval: 10m}"))
    run_git(canary_repo, "commit", "-q", "-am", "staging: steps 10 minutes apart")
    exposition.serve("v1.1.0", 25_000, error_rate=0.001, slower=0.9, seed=1)
    exposition.serve("v1.0.0", 75_000, error_rate=0.001, seed=2)
    scraped(prometheus, 100_000)
    code, [result] = analyze(cli, canary_repo, prometheus, "--record")
    assert code == 3, result
    assert result["outcome"] == "hold"
    reasons = result["decision"]["reasons"]  # type: ignore[index]
    assert reasons[0].startswith("interval: the step has run for ")
    assert reasons[0].endswith(" min")
    assert "of its 10m (analysis.interval); look again in " in reasons[0]
    assert read_state(canary_repo).stack(STACK).config.releases[MODEL].traffic == {"v1.0.0": 95, "v1.1.0": 5}
    snapshot = json.loads((canary_repo / str(result["snapshot"])).read_text())
    assert (snapshot["format"], snapshot["window_start"]) == (2, snapshot["step_started"])
    code, out, _ = cli(canary_repo, "judge", "--replay", "HEAD", "--json")
    assert (code, json.loads(out)["matches"], json.loads(out)["decision"]["action"]) == (0, True, "hold")
