"""`modelctl up/down/ps/traffic` without running anything: which stack is local, and one-line errors."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from infra.build import build_stack
from modelctl.cli.local import local_stack
from modelctl.core.state import load_state
from onebox.monitoring import graph_links
from tests.conftest import Cli
from tests.factories import default_docs, write_repo


def test_the_local_stack_is_the_one_marked_local_else_dev(tmp_path: Path) -> None:
    assert local_stack(load_state(write_repo(tmp_path / "plain", git=False)), None) == "dev"
    models, stacks = default_docs()
    stacks["staging"]["config"]["modelctl:environment"]["local"] = True
    marked = load_state(write_repo(tmp_path / "marked", models, stacks, git=False))
    assert local_stack(marked, None) == "staging"
    assert local_stack(marked, "prod") == "prod"


def test_commands_on_a_stack_that_is_not_up_say_so_in_one_line(repo: Path, cli: Cli) -> None:
    code, out, err = cli(repo, "traffic", "--stack", "staging", "--requests", "10")
    assert code == 1
    assert err.strip().splitlines() == [
        "error: stack staging: is not running on this machine; run 'modelctl up --stack staging' first"
    ]
    code, out, _ = cli(repo, "ps", "--stack", "staging")
    assert (code, out.strip()) == (0, "stack staging is not up")
    code, out, _ = cli(repo, "down", "--stack", "staging")
    assert (code, out.strip()) == (0, "nothing of stack staging was running")
    assert not (repo / ".modelctl").exists() or not any((repo / ".modelctl").rglob("state.json"))


def test_a_first_up_that_fails_leaves_nothing_running(repo: Path, cli: Cli) -> None:
    # The factory's artifacts are in no remote: the mail sink starts, then the first fetch fails.
    code, _, err = cli(repo, "up", "--stack", "staging", "--remote", str(repo / "empty-remote"))
    assert code == 1
    assert "object not found" in err, err
    assert not any((repo / ".modelctl").rglob("state.json"))
    assert cli(repo, "ps", "--stack", "staging")[1].strip() == "stack staging is not up"


def test_down_and_ps_refuse_a_mistyped_stack(repo: Path, cli: Cli) -> None:
    for command in ("down", "ps"):
        code, out, err = cli(repo, command, "--stack", "stagin")
        assert (code, out) == (1, "")
        assert "no stack named 'stagin'; did you mean 'staging'?" in err


def test_up_links_each_panel_that_queries_to_prometheus_graph_page(tmp_path: Path) -> None:
    """The links `modelctl up` prints: one per dashboard panel with queries, `$model` filled in;
    a panel that queries nothing (the releases table) has no link to an empty page."""
    models, stacks = default_docs()
    state = load_state(write_repo(tmp_path / "repo", models, stacks))
    objects = build_stack(state, "staging", mesh="envoy")
    [dashboard] = [o for o in objects if "grafana_dashboard" in o["metadata"].get("labels", {})]
    panels = [p for text in dashboard["data"].values() for p in json.loads(text)["panels"]]
    assert any(not p["targets"] for p in panels)
    links = graph_links(objects, "http://127.0.0.1:9090", "fraud-detection")
    assert [link["panel"] for link in links] == [p["title"] for p in panels if p["targets"]]
    for link, panel in zip(links, [p for p in panels if p["targets"]], strict=True):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(link["url"]).query)
        assert query["g0.expr"] == [panel["targets"][0]["expr"].replace("$model", "fraud-detection")]
