"""`pd-gateway up`: launch a whole topology on this host with one command.

pd-gateway up deploy/topologies/sim-1p1d-2dp.yaml            # simulated workers
pd-gateway up deploy/topologies/nixl-1p1d-cpu.yaml           # real vLLM (CPU)
pd-gateway up TOPOLOGY --engine sim                          # any topology, simulated

Plans the topology (as `pd-gateway plan` does), starts every worker of this host in
its own process group (logs in --log-dir, state in <log-dir>/workers.json), waits for
their health checks, then serves the gateway on them. Workers that die are restarted
with backoff (1, 2, 4 ... 30 s); one that dies 3 times before ever getting healthy,
or reaches --max-restarts, is given up on with a report. Ctrl-C / SIGTERM drains the
gateway, stops every worker group and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config import ConfigError, GatewayConfig, parse_config
from workers.plan import Plan, PlanError, WorkerSpec, plan
from workers.plan.cli import inherited_env
from workers.supervise import RestartPolicy, Supervisor, Worker, failure_report
from workers.topology import SIM_ENTRYPOINT, Topology, TopologyError, load_topology
from workers.warmup import WarmupPolicy, pd_pairs, warm_up

from .up_progress import Progress

ENGINES = ("sim", "vllm")
DEFAULT_LOG_DIR = ".pd-gateway/logs"
# Per start attempt. Neuron workers load (or compile) a model for many minutes.
DEFAULT_READY_TIMEOUT_S = {"sim": 30.0, "vllm": 1800.0}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class UpError(ValueError):
    """The topology cannot be brought up here; the message says why."""


def add_up_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "up",
        help="launch a topology's workers on this host and serve the gateway on them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("topology", help="topology YAML (see deploy/README.md)")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        help="sim: simulated workers (python -m workers.sim) on the same plan; vllm: the planned "
        "vLLM command lines (default: sim for accelerator: sim hosts, else vllm)",
    )
    p.add_argument("--log-dir", default=DEFAULT_LOG_DIR, help=f"worker logs (default: {DEFAULT_LOG_DIR})")
    p.add_argument(
        "--ready-timeout",
        type=float,
        metavar="S",
        help="seconds a start attempt may take to pass /health (default: 30 sim, 1800 vllm)",
    )
    p.add_argument(
        "--max-restarts", type=int, metavar="N", help="give a worker up after N restarts (default: no limit)"
    )
    p.add_argument(
        "--gateway-config",
        metavar="FILE",
        help="gateway YAML for timeouts, health, limits, auth, drain_s (listen and pools come from the topology)",
    )
    p.add_argument("--stop-grace", type=float, default=10.0, metavar="S", help="SIGTERM to SIGKILL (default: 10)")
    p.add_argument(
        "--warmup-rounds",
        type=int,
        default=WarmupPolicy.min_rounds,
        metavar="N",
        help="P->D transfers per prefill/decode pair of a NIXL pool before serving, repeated (up to "
        f"{WarmupPolicy.max_rounds}) until one takes at most {WarmupPolicy.fast_s:g} s; 0: none "
        f"(default: {WarmupPolicy.min_rounds})",
    )
    p.set_defaults(func=run_up)


@dataclass
class Launch:
    """What `up` runs on this host."""

    workers: list[WorkerSpec]
    skipped: list[WorkerSpec]
    gateway: GatewayConfig | None  # None: the gateway's host is another one
    models: list[str]
    nixl_pools: list[str] = field(default_factory=list)  # their P->D pairs are warmed up before serving
    warmup: WarmupPolicy = field(default_factory=WarmupPolicy)


def run_up(args: argparse.Namespace) -> int:
    try:
        topology = local_python(load_topology(args.topology))
        result = plan(topology, inherited_env(os.environ))
        engine = args.engine or default_engine(topology)
        launch = prepare(topology, result, engine, args.gateway_config)
        launch.warmup = replace(launch.warmup, min_rounds=args.warmup_rounds)
    except (TopologyError, PlanError, UpError, ConfigError) as err:
        print(f"pd-gateway up: {err}", file=sys.stderr)
        return 2
    level = launch.gateway.log_level if launch.gateway else "info"
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    policy = RestartPolicy(
        ready_timeout_s=args.ready_timeout or DEFAULT_READY_TIMEOUT_S[engine],
        max_restarts=args.max_restarts,
        stop_grace_s=args.stop_grace,
    )
    for w in launch.skipped:
        print(f"pd-gateway up: skipping {w.name}: host {w.host!r} ({w.url}) is not this machine", file=sys.stderr)
    return _run(_up(launch, Path(args.log_dir), policy))


def default_engine(topology: Topology) -> str:
    return "sim" if all(h.accelerator == "sim" for h in topology.all_hosts) else "vllm"


def local_python(topology: Topology) -> Topology:
    """Workers that `up` starts here run on this interpreter unless the topology names one:
    the planner's default, `python3` from PATH, is often not the environment vLLM is in."""
    if "python" in topology.model_fields_set:
        return topology
    return topology.model_copy(update={"python": sys.executable})


def prepare(topology: Topology, result: Plan, engine: str, gateway_file: str | None) -> Launch:
    ips = {h.name: h.ip for h in topology.all_hosts}
    local = {name for name, ip in ips.items() if is_local(ip)}
    specs = engine_specs(topology, result, engine)
    mine = [w for w in specs if w.host in local]
    gateway_host = topology.gateway.runs_on or topology.all_hosts[0].name
    gateway = gateway_config(result, gateway_file) if gateway_host in local else None
    if not mine and gateway is None:
        raise UpError(f"nothing to run here: no host of the topology ({', '.join(sorted(ips))}) is this machine")
    models = [p.model for p in result.pools]
    nixl = [p.name for p in result.pools if p.protocol == "nixl"]
    return Launch(mine, [w for w in specs if w.host not in local], gateway, models, nixl)


def engine_specs(topology: Topology, result: Plan, engine: str) -> list[WorkerSpec]:
    sim_hosts = {h.name for h in topology.all_hosts if h.accelerator == "sim"}
    if engine == "vllm":
        if any(w.host in sim_hosts for w in result.workers):
            raise UpError(
                "--engine vllm: the topology's hosts are 'accelerator: sim', so the plan has no vLLM "
                "command lines; use a cpu/gpu/trainium topology, or --engine sim"
            )
        return result.workers
    return [replace(w, argv=sim_argv(w, result, planned=w.host in sim_hosts)) for w in result.workers]


def sim_argv(w: WorkerSpec, result: Plan, planned: bool) -> list[str]:
    """The simulated engine's command line for a planned worker.

    On sim hosts the planner already built it (with the pool's sim flags); only the
    interpreter changes, to this one, which can import workers.sim. Elsewhere the
    vLLM flags are dropped and the worker's identity (port, served name, role, KV
    protocol, peers, cores) is kept.
    """
    if planned:
        return [sys.executable, *w.argv[1:]]
    route = next(p for p in result.pools if p.name == w.pool)
    argv = [sys.executable, "-m", SIM_ENTRYPOINT, "--host", urlsplit(w.url).hostname or "127.0.0.1"]
    argv += ["--port", str(w.port), "--model", w.model]
    argv += ["--role", "both" if w.role == "replica" else w.role]
    if "--max-model-len" in w.argv:
        argv += ["--max-model-len", w.argv[w.argv.index("--max-model-len") + 1]]
    if route.protocol is not None:
        argv += ["--kv-protocol", route.protocol]
        if route.protocol == "neuron-legacy" and w.role == "decode":
            argv += ["--kv-peers", ",".join(result.urls(w.pool, "prefill"))]
    if w.cores is not None:
        argv += ["--neuron-cores", w.cores]
    return argv


def is_local(address: str) -> bool:
    """Whether `address` (an IP or a name) is one of this machine's: it can be bound."""
    try:
        infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((sockaddr[0], 0))
            except OSError:
                continue
            return True
    return False


def gateway_config(result: Plan, path: str | None) -> GatewayConfig:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read gateway config {path}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"gateway config {path}: top level must be a mapping")
        taken = sorted({"listen", "pools"} & set(data))
        if taken:
            raise ConfigError(f"gateway config {path}: remove {taken}; `up` takes them from the topology")
    return parse_config({**data, **result.gateway_config()})


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class _Shutdown:
    """First SIGINT/SIGTERM/SIGHUP: orderly stop. Second: the gateway stops draining at once."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.gateway: Any = None

    def __call__(self) -> None:
        if self.requested.is_set() and self.gateway is not None:
            self.gateway.server.force_exit = True
        self.requested.set()


async def _up(launch: Launch, log_dir: Path, policy: RestartPolicy) -> int:
    shutdown = _Shutdown()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        loop.add_signal_handler(sig, shutdown)
    progress: Progress | None = None

    def changed(w: Worker) -> None:
        if progress is not None:
            progress.changed(w)
            if w.state == "failed":
                progress.message("pd-gateway up: " + failure_report(w, policy))
        if w.state == "failed" and shutdown.gateway is not None:  # given up while serving
            stop_routing(shutdown.gateway.gateway, w.spec.url)

    supervisor = Supervisor(launch.workers, log_dir, policy, changed, cwd=Path.cwd())
    progress = Progress(sys.stderr, supervisor.workers)
    print(f"pd-gateway up: starting {len(launch.workers)} worker(s); logs in {log_dir}/", file=sys.stderr)
    supervisor.start()
    animation = asyncio.create_task(progress.animate())
    try:
        return await _serve(launch, supervisor, shutdown, progress)
    finally:
        animation.cancel()
        progress.finish()
        problems = await supervisor.stop()
        for problem in problems:
            print(f"pd-gateway up: {problem}", file=sys.stderr)
        print("pd-gateway up: all workers stopped", file=sys.stderr)


async def _until(event: asyncio.Event, other: asyncio.Future[Any]) -> None:
    """Wait for `event` or `other`; `other` is left running (it may be the gateway)."""
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait([waiter, other], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


async def _warm_up(launch: Launch, up: list[Worker]) -> None:
    """Full P->D transfers on every healthy pair of each NIXL pool, so that the first NIXL
    handshake and the slow first transfers (docs/real-vllm.md) are not a user's."""
    pairs = pd_pairs([w.spec for w in up], launch.nixl_pools)
    if not pairs or launch.warmup.min_rounds <= 0:
        return
    print(f"pd-gateway up: warming up {len(pairs)} prefill->decode pair(s)", file=sys.stderr, flush=True)
    for result in await warm_up(pairs, launch.warmup, lambda line: print(f"[up] {line}", file=sys.stderr)):
        print(f"pd-gateway up: {result.summary()}", file=sys.stderr, flush=True)


def without_workers(config: GatewayConfig, urls: set[str]) -> GatewayConfig:
    """The gateway's pools without these workers' URLs: `up` could not start them, and
    whatever else answers there (a process that held the port) is not to be routed to.
    A role left with none keeps its pool (503 until service resumes; no new validation)."""
    gone = {u.rstrip("/") for u in urls}

    def keep(found: list[str]) -> list[str]:
        return [u for u in found if u.rstrip("/") not in gone]

    pools = [
        p.model_copy(update={k: keep(getattr(p, k)) for k in ("workers", "prefill", "decode")}) for p in config.pools
    ]
    return config.model_copy(update={"pools": pools})


def stop_routing(gateway: Any, url: str) -> None:
    """Take a worker out of the running gateway's pools (it drains, then leaves)."""
    for pool in gateway.pools:
        for role, group in list(pool.groups.items()):
            if any(e.url == url.rstrip("/") for e in group):
                pool.set_members(role, [e.url for e in group if e.url != url.rstrip("/")])


async def _serve(launch: Launch, supervisor: Supervisor, shutdown: _Shutdown, progress: Progress) -> int:
    from gateway.server import start_gateway  # uvicorn + fastapi: not for every `pd-gateway` command

    settled = asyncio.ensure_future(supervisor.settled())
    await _until(shutdown.requested, settled)
    settled.cancel()
    progress.finish()
    if shutdown.requested.is_set():
        return 0
    up = [w for w in supervisor.workers if w.healthy_after_s is not None]
    if launch.workers and not up:
        print("pd-gateway up: no worker came up; see the reports above", file=sys.stderr)
        return 1
    warming = asyncio.ensure_future(_warm_up(launch, up))
    await _until(shutdown.requested, warming)
    if shutdown.requested.is_set():
        warming.cancel()
        return 0
    if warming.exception() is not None:  # a bug, not a worker's answer: say so and serve anyway
        print(f"pd-gateway up: the warm-up failed: {warming.exception()!r}", file=sys.stderr)
    if launch.gateway is None:
        print(f"pd-gateway up: {len(up)} worker(s) up; the gateway runs on another host", file=sys.stderr)
        await shutdown.requested.wait()
        return 0
    failed_urls = {w.spec.url for w in supervisor.workers if w.healthy_after_s is None}
    try:
        gateway = await start_gateway(without_workers(launch.gateway, failed_urls))
    except OSError as err:
        listen = launch.gateway.listen
        print(f"pd-gateway up: cannot serve the gateway on {listen.host}:{listen.port}: {err}", file=sys.stderr)
        return 1
    shutdown.gateway = gateway
    failed = len(launch.workers) - len(up)
    print(f"pd-gateway up: serving {gateway.url} (models: {', '.join(launch.models)}; "
          f"{len(up)} worker(s) up, {failed} failed{' and not routed to' if failed else ''})",
          flush=True)  # fmt: skip
    await _until(shutdown.requested, gateway.task)
    if gateway.task.done():  # ended by itself: nothing to drain
        failure = gateway.task.exception() if not gateway.task.cancelled() else None
        print(f"pd-gateway up: the gateway stopped unexpectedly: {failure!r}", file=sys.stderr)
        return 1
    print("pd-gateway up: draining the gateway", file=sys.stderr)
    await gateway.close()
    return 0
