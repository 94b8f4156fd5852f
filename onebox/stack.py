"""`up`, `down`, `ps`: run the rendered objects of one stack on this machine, and reconcile them.

Everything lives in `<repo>/.modelctl/run/<stack>/`: `state.json` (pids, ports, argv), `logs/`,
`pods/<deployment>/<volume>/` (the emptyDir volumes), `nginx/`, `prometheus/`, `alertmanager/`,
`mailbox/`. A lock file serializes commands on one stack.

Reconciling after a release commit: new servers start (and are ready) before the gateway and
Prometheus are reloaded to point at them; servers no longer rendered stop after the reload.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from filelock import FileLock, Timeout

from modelctl.core.errors import UserError
from modelctl.core.mesh import merged_destination_rules
from onebox import monitoring, processes
from onebox.monitoring import Target, Timing
from onebox.processes import Proc
from onebox.proxy import Routed, Unsupported, nginx_config

Obj = dict[str, Any]
Say = Callable[[str], None]
RUN_DIR = Path(".modelctl") / "run"
LOCK_SECONDS = 600.0
SERVICE_SECONDS = 60.0
CONFIG_PATH = "/_modelctl/config"


@dataclass(frozen=True)
class Options:
    """How to run the stack here: the DVC remote replacing the rendered one, test timings, and
    extra flags for every model server (e.g. a shorter drift interval)."""

    remote: str
    timing: Timing = field(default_factory=Timing)
    server_args: tuple[str, ...] = ()


@dataclass
class RunState:
    """What runs for one stack (`state.json`): the fixed ports by role, the processes, the models' addresses."""

    stack: str
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    models: dict[str, Obj] = field(default_factory=dict)

    @classmethod
    def load(cls, run: Path, stack: str) -> RunState:
        path = run / "state.json"
        if not path.exists():
            return cls(stack)
        data = json.loads(path.read_text(encoding="utf-8"))
        procs = {name: Proc.from_json(p) for name, p in data["procs"].items()}
        return cls(data["stack"], data["ports"], procs, data.get("models", {}))

    def save(self, run: Path) -> None:
        data = {
            "stack": self.stack,
            "ports": self.ports,
            "procs": {name: p.to_json() for name, p in self.procs.items()},
            "models": self.models,
        }
        _write(run / "state.json", json.dumps(data, indent=2))

    def port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = processes.free_port()
        return self.ports[name]


def run_dir(root: Path, stack: str) -> Path:
    """Where a stack's state, logs, configurations and mailbox live (ignored by git)."""
    return root / RUN_DIR / stack


def _write(path: Path, text: str) -> bool:
    """Write atomically; whether the content changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return True


def _locked(root: Path, stack: str) -> FileLock:
    run = run_dir(root, stack)
    run.mkdir(parents=True, exist_ok=True)
    return FileLock(run / "lock", timeout=LOCK_SECONDS)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _tool(name: str, package: str) -> str:
    """The path of a Debian tool (nginx lives in /usr/sbin, outside a user's PATH)."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if not found:
        raise UserError(name, "is not installed", f"run 'make tools' (or apt-get install {package})")
    return found


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------- the objects


def _of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


@dataclass(frozen=True)
class ServerPlan:
    """One Deployment as local processes: init commands, then the server."""

    name: str
    namespace: str
    labels: dict[str, str]
    init: list[list[str]]
    argv: list[str]
    env: dict[str, str]
    container: str
    port_name: str
    ready_path: str
    ready_seconds: float

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.init, self.argv, self.env)


def server_plans(objects: list[Obj], pods: Path, options: Options) -> list[ServerPlan]:
    """Every rendered Deployment as local commands, its volumes as folders under `pods`/<name>/."""
    return [_server_plan(d, pods / d["metadata"]["name"], options) for d in _of_kind(objects, "Deployment")]


def _server_plan(deployment: Obj, pod: Path, options: Options) -> ServerPlan:
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mounts = {
        m["mountPath"]: m["name"]
        for c in [container, *spec.get("initContainers", [])]
        for m in c.get("volumeMounts", [])
    }

    def local(value: str) -> str:
        for mount, volume in sorted(mounts.items(), key=lambda item: -len(item[0])):
            if value == mount or value.startswith(mount + "/"):
                return str(pod / volume) + value[len(mount) :]
        return value

    def command(argv: list[str]) -> list[str]:
        argv = [local(a) for a in argv]
        if argv[0] == "modelctl":
            argv[0] = str(Path(sys.executable).parent / "modelctl")
        elif argv[0] == "python":
            argv[0] = sys.executable
        if "--remote" in argv:
            argv[argv.index("--remote") + 1] = options.remote
        return argv

    init = [command(c["command"] + c.get("args", [])) for c in spec.get("initContainers", [])]
    probe = container["readinessProbe"]["httpGet"]
    startup = container.get("startupProbe", container["readinessProbe"])
    port = next(p for p in container["ports"] if p["name"] == probe["port"])
    return ServerPlan(
        name=deployment["metadata"]["name"],
        namespace=deployment["metadata"]["namespace"],
        labels=deployment["spec"]["template"]["metadata"]["labels"],
        init=init,
        argv=command(container["command"] + container.get("args", [])),
        env={e["name"]: local(e["value"]) for e in container.get("env", [])},
        container=container["name"],
        port_name=port["name"],
        ready_path=probe["path"],
        ready_seconds=float(startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)),
    )


# ---------------------------------------------------------------------------- up


def up(
    root: Path, stack: str, objects: list[Obj], alertmanager: Obj | None, *, options: Options, say: Say
) -> Obj:
    """Start or reconcile the stack; returns its addresses (see `addresses`).

    Raises UserError (one line) when a rendered field cannot run locally, a process does not get
    ready, or another command holds the stack's lock for too long.
    """
    run = run_dir(root, stack)
    try:
        with _locked(root, stack):
            state = RunState.load(run, stack)
            fresh = not state.procs
            try:
                _Reconcile(root, run, state, options, say).apply(objects, alertmanager)
            except BaseException:
                if fresh:  # a first `up` that fails leaves nothing running; a reconcile keeps the old stack
                    _stop_all(run, state)
                raise
            return addresses(run, state)
    except Timeout:
        raise UserError(
            str(run / "lock"), "another modelctl command holds this stack", "wait for it"
        ) from None
    except Unsupported as exc:
        raise UserError("rendered objects", str(exc), "the local stack cannot run this field") from None


class _Reconcile:
    """One `up`: start what is missing or changed, reload configurations, stop what is gone."""

    def __init__(self, root: Path, run: Path, state: RunState, options: Options, say: Say) -> None:
        self.root = root
        self.run = run
        self.state = state
        self.options = options
        self.say = say
        self.env = dict(os.environ)

    def log(self, name: str) -> str:
        return str(self.run / "logs" / f"{name}.log")

    def apply(self, objects: list[Obj], alertmanager: Obj | None) -> None:
        state = self.state
        self.ensure(
            Proc(
                name="sinks",
                kind="sinks",
                argv=[
                    sys.executable,
                    "-m",
                    "onebox.sinks",
                    "--mailbox",
                    str(self.run / "mailbox"),
                    "--smtp-port",
                    str(state.port("smtp")),
                    "--webhook-port",
                    str(state.port("webhook")),
                ],
                port=state.port("webhook"),
                health=f"{_url(state.port('webhook'))}/healthz",
                log=self.log("sinks"),
                fingerprint="sinks",
            )
        )
        plans = server_plans(objects, self.run / "pods", self.options)
        replaced = self.start_servers(plans)
        targets = [
            Target(
                p.name + "-local",
                p.namespace,
                p.labels,
                p.container,
                p.port_name,
                f"127.0.0.1:{state.procs[p.name].port}",
            )
            for p in plans
        ]
        self.gateway(_routed(objects, plans, state))
        self.prometheus(objects, targets)
        self.wait_scraped({target.address for target in targets})
        self.alertmanager(alertmanager)
        for proc, why in replaced:
            self.say(f"stopping {proc.name} (pid {proc.pid}): {why}")
            processes.stop(proc)
        state.models = _models(objects, plans, state)
        state.save(self.run)

    def wait_scraped(self, addresses: set[str]) -> None:
        """Return once Prometheus has scraped every server: a counter's first sample must precede
        the traffic, or rate() and increase() never count that traffic (they need two samples)."""
        url = f"{_url(self.state.ports['prometheus'])}/api/v1/targets"
        deadline = time.monotonic() + SERVICE_SECONDS
        while True:
            active = httpx.get(url, timeout=5.0).json()["data"]["activeTargets"]
            scraped = {t["labels"].get("instance") for t in active if t["health"] == "up"}
            if addresses <= scraped:
                return
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(addresses - scraped))
                raise UserError(
                    url, f"Prometheus has not scraped {missing} after {SERVICE_SECONDS:g} s", "see the log"
                )
            time.sleep(0.2)

    def ensure(self, proc: Proc) -> bool:
        """Start `proc` unless the same one runs; whether it was started."""
        current = self.state.procs.get(proc.name)
        same = current and current.fingerprint == proc.fingerprint and current.argv == proc.argv
        if current and same and processes.running(current):
            return False
        if current:
            processes.stop(current)
        self.say(f"starting {proc.name} on 127.0.0.1:{proc.port}")
        processes.start(proc, self.env, self.root)
        self.state.procs[proc.name] = proc
        self.state.save(self.run)
        processes.wait_until_healthy(proc, SERVICE_SECONDS)
        return True

    def start_servers(self, plans: list[ServerPlan]) -> list[tuple[Proc, str]]:
        """Start every server not already running as planned; the old processes to stop after the
        reload, each with why."""
        state, options = self.state, self.options
        replaced: list[tuple[Proc, str]] = []
        for plan in plans:
            fingerprint = _fingerprint(plan.fingerprint, options.server_args)
            current = state.procs.get(plan.name)
            if current and current.fingerprint == fingerprint and processes.running(current):
                continue
            if current:
                running = processes.running(current)
                replaced.append(
                    (current, "its settings changed" if running else "it had exited; started again")
                )
            self.say(f"fetching {plan.name}'s artifacts from {options.remote}")
            for argv in plan.init:
                Path(argv[argv.index("-o") + 1]).parent.mkdir(parents=True, exist_ok=True)
                processes.run_once(argv, self.env, self.root, f"{plan.name}: {' '.join(argv[1:3])}")
            port = processes.free_port()
            proc = Proc(
                name=plan.name,
                kind="server",
                argv=[*plan.argv, "--host", "127.0.0.1", "--port", str(port), *options.server_args],
                port=port,
                health=f"{_url(port)}{plan.ready_path}",
                log=self.log(plan.name),
                fingerprint=fingerprint,
                extra={"model": plan.labels["app"], "version": plan.labels["version"]},
            )
            self.say(f"starting {plan.name} on 127.0.0.1:{port}")
            processes.start(proc, {**self.env, **plan.env}, self.root)
            state.procs[plan.name] = proc
            state.save(self.run)
            processes.wait_until_healthy(proc, plan.ready_seconds)
        wanted = {p.name for p in plans}
        replaced += [
            (p, "no longer rendered")
            for name, p in state.procs.items()
            if p.kind == "server" and name not in wanted
        ]
        for proc, _ in replaced:
            if state.procs.get(proc.name) is proc:
                del state.procs[proc.name]
        return replaced

    def gateway(self, routed: list[Routed]) -> None:
        prefix = self.run / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        port = self.state.port("gateway")
        text = nginx_config(routed, port, str(prefix))
        digest = _fingerprint(text)
        # The default server says which configuration is in use, so a reload is known to be applied.
        text = text.replace(
            "        location / {",
            f"        location = {CONFIG_PATH} {{ return 200 '{digest}'; }}\n        location / {{",
            1,
        )
        conf, candidate = prefix / "nginx.conf", prefix / "nginx.conf.new"
        _write(candidate, text)
        base = [_tool("nginx", "nginx-light"), "-p", str(prefix), "-e", str(prefix / "error.log")]
        check = subprocess.run([*base, "-t", "-q", "-c", str(candidate)], capture_output=True, text=True)
        if check.returncode != 0:
            raise UserError(
                str(candidate),
                f"nginx refuses the translated routes: {check.stderr.strip().splitlines()[0]}",
                "report it: the translation has a bug",
            )
        os.replace(candidate, conf)
        proc = Proc(
            name="gateway",
            kind="gateway",
            argv=[*base, "-c", str(conf)],
            port=port,
            health=f"{_url(port)}{CONFIG_PATH}",
            log=self.log("gateway"),
            fingerprint="nginx",
        )

        def applied(response: httpx.Response) -> bool:
            return response.text == digest

        current = self.state.procs.get("gateway")
        if not self.ensure(proc) and current and not processes.healthy(current.health, applied):
            self.say("reloading the gateway's routes (SIGHUP)")
            processes.signal_reload(current)
        processes.wait_until_healthy(self.state.procs["gateway"], SERVICE_SECONDS, applied)

    def prometheus(self, objects: list[Obj], targets: list[Target]) -> None:
        folder, timing = self.run / "prometheus", self.options.timing
        rules = []
        changed = False
        for rule in _of_kind(objects, "PrometheusRule"):
            path = folder / "rules" / f"{rule['metadata']['namespace']}-{rule['metadata']['name']}.yml"
            changed |= _write(path, yaml.safe_dump(monitoring.rule_file(rule, timing), sort_keys=False))
            rules.append(path)
        for stale in set((folder / "rules").glob("*.yml")) - set(rules):
            stale.unlink()
            changed = True
        monitors, services = _of_kind(objects, "ServiceMonitor"), _of_kind(objects, "Service")
        jobs = monitoring.scrape_configs(monitors, services, targets, timing)
        alertmanager = f"127.0.0.1:{self.state.port('alertmanager')}"
        config = monitoring.prometheus_config(jobs, rules, alertmanager, timing)
        changed |= _write(folder / "prometheus.yml", yaml.safe_dump(config, sort_keys=False))
        self.serve(
            "prometheus",
            "Prometheus",
            changed,
            [
                _tool("prometheus", "prometheus"),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                "--web.enable-lifecycle",
            ],
        )

    def alertmanager(self, rendered: Obj | None) -> None:
        folder = self.run / "alertmanager"
        base = rendered or {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}
        smtp, webhook = f"127.0.0.1:{self.state.port('smtp')}", _url(self.state.port("webhook"))
        config = monitoring.alertmanager_config(base, smtp, webhook, folder / "secrets", self.options.timing)
        changed = _write(folder / "alertmanager.yml", yaml.safe_dump(config, sort_keys=False))
        self.serve(
            "alertmanager",
            "Alertmanager",
            changed,
            [
                _tool("prometheus-alertmanager", "prometheus-alertmanager"),
                f"--config.file={folder / 'alertmanager.yml'}",
                f"--storage.path={folder / 'data'}",
                "--cluster.listen-address=",
            ],
        )

    def serve(self, name: str, title: str, changed: bool, argv: list[str]) -> None:
        """Start a Prometheus-style service (health at /-/ready) on its port, or reload it if its
        configuration `changed`."""
        port = self.state.port(name)
        proc = Proc(
            name=name,
            kind=name,
            argv=[*argv, f"--web.listen-address=127.0.0.1:{port}"],
            port=port,
            health=f"{_url(port)}/-/ready",
            log=self.log(name),
            fingerprint=name,
        )
        if not self.ensure(proc) and changed:
            self.say(f"reloading {title}")
            _reload(self.state.procs[name], title)


def _reload(proc: Proc, what: str) -> None:
    """POST /-/reload: it answers once the new configuration is in use, or says why it is not
    (a SIGHUP would be silent about both)."""
    response = httpx.post(f"{_url(proc.port)}/-/reload", timeout=30.0)
    if response.status_code != 200:
        raise UserError(
            proc.log, f"{what} refused the new configuration: {response.text.strip()}", "see the log"
        )


def _routed(objects: list[Obj], plans: list[ServerPlan], state: RunState) -> list[Routed]:
    rules = merged_destination_rules(_of_kind(objects, "DestinationRule"))
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in _of_kind(objects, "Service")}
    routed = []
    for vs in _of_kind(objects, "VirtualService"):
        namespace = vs["metadata"]["namespace"]
        rule = rules[(namespace, vs["spec"]["hosts"][0])]
        service = services[(namespace, rule["spec"]["host"].split(".")[0])]
        addresses = {}
        for subset in rule["spec"].get("subsets", []):
            selector = {**service["spec"]["selector"], **subset["labels"]}
            pods = [
                p
                for p in plans
                if p.namespace == namespace and all(p.labels.get(k) == v for k, v in selector.items())
            ]
            if len(pods) != 1:
                raise Unsupported(
                    f"DestinationRule {rule['metadata']['name']}: subset {subset['name']} selects {len(pods)} Deployments, not 1"
                )
            addresses[subset["name"]] = f"127.0.0.1:{state.procs[pods[0].name].port}"
        routed.append(Routed(vs, rule, addresses))
    return routed


def _models(objects: list[Obj], plans: list[ServerPlan], state: RunState) -> dict[str, Obj]:
    models = {}
    for vs in _of_kind(objects, "VirtualService"):
        name = vs["metadata"]["name"]
        versions = {
            p.labels["version"]: _url(state.procs[p.name].port)
            for p in plans
            if p.labels.get("app") == name and p.namespace == vs["metadata"]["namespace"]
        }
        models[name] = {"host": vs["spec"]["hosts"][0], "versions": dict(sorted(versions.items()))}
    return models


def addresses(run: Path, state: RunState) -> Obj:
    """`{"stack", "gateway", "models": {model: {"host", "versions": {version: url}}}, "prometheus",
    "alertmanager", "mailbox"}`."""
    return {
        "stack": state.stack,
        "gateway": _url(state.ports["gateway"]),
        "models": state.models,
        "prometheus": _url(state.ports["prometheus"]),
        "alertmanager": _url(state.ports["alertmanager"]),
        "mailbox": str(run / "mailbox"),
    }


# ---------------------------------------------------------------------------- down, ps, status


def status(root: Path, stack: str) -> Obj:
    """The addresses of a running stack (as `up` returns them); UserError when it is not up."""
    run = run_dir(root, stack)
    state = RunState.load(run, stack)
    gateway = state.procs.get("gateway")
    if gateway is None or not processes.running(gateway):
        raise UserError(
            f"stack {stack}", "is not running on this machine", f"run 'modelctl up --stack {stack}' first"
        )
    return addresses(run, state)


def down(root: Path, stack: str) -> list[Obj]:
    """Stop every process of the stack by pid; what was stopped. The gateway goes first, so servers
    drain no idle proxy connections and no request arrives at a stopping server."""
    run = run_dir(root, stack)
    if not (run / "state.json").exists():
        return []
    with _locked(root, stack):
        return _stop_all(run, RunState.load(run, stack))


def _stop_all(run: Path, state: RunState) -> list[Obj]:
    order = {"gateway": 0, "server": 1, "prometheus": 2, "alertmanager": 3, "sinks": 4}
    stopped = []
    for proc in sorted(state.procs.values(), key=lambda p: order.get(p.kind, 0)):
        was_running = processes.running(proc)
        processes.stop(proc)
        stopped.append({"name": proc.name, "pid": proc.pid, "was_running": was_running})
    (run / "state.json").unlink(missing_ok=True)
    return stopped


def ps(root: Path, stack: str) -> list[Obj]:
    """Every process of the stack: name, kind, pid, port, running, healthy."""
    run = run_dir(root, stack)
    state = RunState.load(run, stack)
    rows = []
    for proc in state.procs.values():
        alive = processes.running(proc)
        rows.append(
            {
                "name": proc.name,
                "kind": proc.kind,
                "pid": proc.pid,
                "port": proc.port,
                "running": alive,
                "healthy": alive and processes.healthy(proc.health),
                "log": proc.log,
                **proc.extra,
            }
        )
    return rows
