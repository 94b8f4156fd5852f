"""`modelctl up | down | ps | traffic`: a stack's rendered objects running on this machine."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from modelctl.cli import EXIT_FINDING, EXIT_OK, Result, add_command, progress, repo_root
from modelctl.core.errors import UserError
from modelctl.core.state import State
from modelctl.repo import dvcstore, registry
from modelctl.repo.state import read_state

DEFAULT_LOCAL_STACK = "dev"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        sub, "up", run_up, "run a stack on this machine (servers, gateway, Prometheus, Alertmanager)"
    )
    _stack_flag(parser)
    parser.add_argument(
        "--remote", help="the DVC remote to fetch artifacts from (default: the repository's, not the stack's)"
    )
    parser.add_argument("--scrape-interval", metavar="DURATION", help="instead of the ServiceMonitor's")
    parser.add_argument("--evaluation-interval", metavar="DURATION", default="15s", help="rule evaluation")
    parser.add_argument("--alert-for", metavar="DURATION", help="shorten every rule's `for` to at most this")
    parser.add_argument("--group-wait", metavar="DURATION", help="instead of the routes' group_wait")
    parser.add_argument("--group-interval", metavar="DURATION", help="instead of the routes' group_interval")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag for every model server, e.g. --server-arg=--drift-interval-s=5",
    )

    _stack_flag(add_command(sub, "down", run_down, "stop everything `up` started for a stack"))
    _stack_flag(
        add_command(
            sub,
            "ps",
            run_ps,
            "the processes of a local stack: ports, readiness, restarts; exit 2 if one is not running or not ready",
        )
    )

    parser = add_command(sub, "traffic", run_traffic, "send held-out rows through the local stack's gateway")
    _stack_flag(parser)
    parser.add_argument("--model", help="the model to call (default: the stack's only or first model)")
    parser.add_argument("--requests", type=int, required=True, metavar="N", help="how many requests to send")
    parser.add_argument(
        "--rate", type=float, metavar="R", help="requests per second (default: as fast as possible)"
    )
    parser.add_argument("--users", type=int, default=100, metavar="U", help="distinct users (cookies)")
    parser.add_argument("--feedback", action="store_true", help="post each row's true label as feedback")
    parser.add_argument(
        "--shift", action="append", default=[], metavar="FEATURE=DELTA", help="add DELTA to a feature (drift)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the rows and users (default 0)")


def _stack_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stack",
        help=f"the stack (default: the one whose environment says local: true, else {DEFAULT_LOCAL_STACK})",
    )


def local_stack(state: State, name: str | None) -> str:
    if name:
        return name
    marked = [s.name for s in state.stacks.values() if s.config.environment.local]
    return marked[0] if marked else DEFAULT_LOCAL_STACK


def run_up(args: argparse.Namespace) -> Result:
    # Imported when used: the serving image has neither shell.
    from infra.alertmanager import native_config
    from infra.build import build_stack
    from onebox.monitoring import Timing
    from onebox.stack import Options, up

    root = repo_root(args)
    state = read_state(root)
    name = local_stack(state, args.stack)
    stack = state.stack(name)
    rendered_alertmanager = native_config(stack) if stack.config.environment.receivers else None
    options = Options(
        remote=registry.remote_location(root, args.remote).url,
        timing=Timing(
            scrape_interval=args.scrape_interval,
            evaluation_interval=args.evaluation_interval,
            alert_for=args.alert_for,
            group_wait=args.group_wait,
            group_interval=args.group_interval,
        ),
        server_args=tuple(args.server_arg),
    )
    # The local data plane is Envoy: the alerts read its cluster statistics, whatever the stack's mesh.
    objects = build_stack(state, name, mesh="envoy")
    data = up(root, name, objects, rendered_alertmanager, options=options, say=progress)
    return Result(data, _up_text(data))


def _up_text(data: dict[str, Any]) -> str:
    lines = [
        f"stack {data['stack']} runs on this machine:",
        f"  gateway       {data['gateway']}  (Envoy; its admin and statistics: {data['gateway_admin']})",
    ]
    for model, entry in data["models"].items():
        lines.append(f"  {model}  (Host: {entry['host']})")
        for version, urls in entry["pods"].items():
            lines.append(f"    {version:<12}{'  '.join(urls)}")
    alertmanager = data["alertmanager"]
    if not data["alertmanager_ui"]:
        alertmanager += (
            f"  (API only, no web UI in this build: amtool alert query --alertmanager.url={alertmanager})"
        )
    lines += [
        f"  prometheus    {data['prometheus']}",
        f"  alertmanager  {alertmanager}",
        f"  mailbox       {data['mailbox']}",
        "where to look (the dashboard's panels, in Prometheus):",
    ]
    for model, entry in data["models"].items():
        lines += [f"  {model}: {graph['panel']}\n    {graph['url']}" for graph in entry["graphs"]]
    return "\n".join(lines)


def run_down(args: argparse.Namespace) -> Result:
    from onebox.stack import down

    root = repo_root(args)
    state = read_state(root)
    name = local_stack(state, args.stack)
    stopped = down(root, name)
    if not stopped:
        state.stack(name)  # a mistyped name is an error; a stack removed from git may still be stopped
    text = "\n".join(f"stopped {s['name']} (pid {s['pid']})" for s in stopped if s["was_running"])
    return Result({"stack": name, "stopped": stopped}, text or f"nothing of stack {name} was running")


def run_ps(args: argparse.Namespace) -> Result:
    from onebox.stack import ps

    root = repo_root(args)
    state = read_state(root)
    name = local_stack(state, args.stack)
    rows = ps(root, name)
    if not rows:
        state.stack(name)
        return Result({"stack": name, "processes": rows}, f"stack {name} is not up")
    lines = [f"{'NAME':<40}{'PID':>8}  {'PORT':>6}  {'RESTARTS':>8}  STATE"]
    for row in rows:
        lines.append(
            f"{row['name']:<40}{row['pid']:>8}  {row['port']:>6}  {row.get('restarts', ''):>8}  {_ps_state(row)}"
        )
    down = [row["name"] for row in rows if not row["healthy"]]
    if down:
        lines.append(f"not running or not ready: {', '.join(down)}")
    # Something not running or not ready is a finding (exit 2), as `doctor` finding missing objects.
    return Result({"stack": name, "processes": rows}, "\n".join(lines), EXIT_FINDING if down else EXIT_OK)


def _ps_state(row: dict[str, Any]) -> str:
    if row.get("state") == "waiting":
        state = f"CrashLoopBackOff (restarting in {row['restart_in_s']:g} s)"
    elif row["healthy"]:
        state = "ready" if row["kind"] == "server" else "running"
    else:
        state = "running, not ready" if row["running"] else "stopped"
    last = row.get("last_exit")
    if last:
        how = f"killed by {last['signal']}" if last.get("signal") else f"exit code {last.get('code')}"
        ago = time.time() - last["at"]
        state += f"; last exit: {how}, {ago:.0f} s ago"
    return state


def run_traffic(args: argparse.Namespace) -> Result:
    from onebox.stack import status
    from onebox.traffic import Workload, json_rows, send, shifted

    root = repo_root(args)
    state = read_state(root)
    name = local_stack(state, args.stack)
    running = status(root, name)
    # The stack file's order, not the run state's: "first" means first as the user wrote them.
    served = [m for m in state.stack(name).config.releases if m in running["models"]]
    model: str = args.model or next(iter(served), "")
    if model not in running["models"]:
        raise UserError(
            f"stack {name}", f"model {model!r} is not served", f"use one of {list(running['models'])}"
        )
    spec = state.model(model)
    rows, labels = held_out(root, model)
    shifts = _shifts(args.shift, spec.signature.names)
    work = Workload(
        gateway=running["gateway"],
        host=running["models"][model]["host"],
        rows=json_rows(
            shifted(rows, spec.signature.names, shifts), [f.type for f in spec.signature.features]
        ),
        labels=[spec.output.classes[int(y)] for y in labels],
        requests=args.requests,
        users=args.users,
        rate=args.rate,
        feedback=args.feedback,
        seed=args.seed,
    )
    from tqdm import tqdm

    with tqdm(total=args.requests, unit="req", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        summary = send(work, bar.update)
    summary.update({"stack": name, "model": model, "shift": shifts})
    return Result(summary, _traffic_text(summary))


def _shifts(values: list[str], names: list[str]) -> dict[str, float]:
    shifts = {}
    for value in values:
        feature, _, delta = value.partition("=")
        if feature not in names:
            raise UserError("--shift", f"{feature!r} is not a feature", f"use one of {', '.join(names)}")
        try:
            shifts[feature] = float(delta)
        except ValueError:
            raise UserError(
                "--shift", f"{value!r}: {delta!r} is not a number", "write FEATURE=DELTA"
            ) from None
    return shifts


def held_out(root: Path, model: str) -> tuple[Any, Any]:
    """The model's held-out rows and labels (data/<model>/X_test.npy, y_test.npy): pulled from the
    DVC remote when absent, else rebuilt by the prepare stage (it is byte-reproducible)."""
    import numpy as np

    folder = root / "data" / model
    if not (folder / "X_test.npy").exists():
        progress(f"data/{model} is absent: pulling it from the DVC remote")
        try:
            dvcstore.run_dvc(root, "pull", "-q", f"data/{model}")
        except UserError:
            progress(f"not in the remote: running the prepare stage for {model}")
            dvcstore.run_dvc(root, "repro", "-q", "--single-item", f"prepare@{model}")
    return np.load(folder / "X_test.npy"), np.load(folder / "y_test.npy")


def _traffic_text(summary: dict[str, Any]) -> str:
    lines = [f"{summary['requests']} requests to {summary['model']} on {summary['stack']}"]
    lines.append(f"  {'VERSION':<12}{'REQUESTS':>9}{'ERRORS':>8}{'P50 ms':>9}{'P99 ms':>9}")
    for version, row in summary["versions"].items():
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}"
        p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
        lines.append(f"  {version:<12}{row['requests']:>9}{row['errors']:>8}{p50:>9}{p99:>9}")
    if summary["feedback"]:
        lines.append(f"  feedback posted for {summary['feedback']} predictions")
    return "\n".join(lines)
