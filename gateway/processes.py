"""`processes: N`: N gateway processes serving one listening port, started, drained and stopped
as one.

One Python process relays on one core. The supervisor (the process `pd-gateway serve` started)
holds the port with an SO_REUSEPORT socket that never listens, and starts N children that each
bind the same port with SO_REUSEPORT and listen: the kernel spreads new connections over them by
a hash of the connection's addresses. Each child is a whole gateway (its own pools, health checks,
worker-metrics poller and prefix view; routing stays coherent through the affinity of
policies/affinity.py). The admission limits are shared out, so they mean for the whole what they
say: each child gets `limits.max_inflight`, `queue` and `max_inflight_per_worker` divided by N,
rounded up. /metrics aggregates every child (telemetry/shared.py).

SIGTERM or SIGINT to the supervisor is passed to every child (drain: stop accepting, let streams
finish within `drain_s`); a second one stops them at once. SIGHUP is passed on too: each child
reads the config again and takes its share of it (gateway/reload.py). A child that dies otherwise
is started again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from .config import GatewayConfig, Listen

log = logging.getLogger("pd_gateway")

SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode reads it at import
RESTART_PAUSE_S = 1.0


def share_limits(config: GatewayConfig, processes: int) -> GatewayConfig:
    """One child's config: the whole's admission limits divided among `processes`, rounded up."""
    limits = config.limits.model_copy(
        update={
            "max_inflight": math.ceil(config.limits.max_inflight / processes),
            "queue": math.ceil(config.limits.queue / processes),
            "max_inflight_per_worker": math.ceil(config.limits.max_inflight_per_worker / processes),
        }
    )
    return config.model_copy(update={"limits": limits, "processes": 1})


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the supervisor dies, however it dies (no orphan
    keeps serving on the port)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed supervisor leaves its children running
        return
    if os.getppid() == 1:  # the supervisor died before the call
        os._exit(1)


Source = Callable[[], GatewayConfig]


class _ChildSource:
    """A child's config read again: the whole's, on the port the supervisor holds, its share of the limits."""

    def __init__(self, source: Source, listen: Listen, processes: int) -> None:
        self.source, self.listen, self.processes = source, listen, processes

    def __call__(self) -> GatewayConfig:
        return share_limits(self.source().model_copy(update={"listen": self.listen}), self.processes)


def _child(config_json: str, index: int, source: Source | None) -> None:
    from .access_log import configure_logging
    from .server import start_gateway

    _die_with_parent()
    config = _current(config_json, source)
    configure_logging(config.log_format, config.log_level)

    async def main() -> None:
        gateway = await start_gateway(config, install_signal_handlers=True, source=source, reuse_port=True)
        log.info("gateway process %d (pid %d) serving on %s", index, os.getpid(), gateway.url)
        await gateway.wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def _current(config_json: str, source: Source | None) -> GatewayConfig:
    """The config as it is now (a child restarted after a reload starts on the reloaded one); the
    supervisor's if it cannot be read again."""
    if source is not None:
        from .config import ConfigError

        try:
            return source()
        except ConfigError as err:
            log.error("config not read again, starting on the one the gateway started with: %s", err)
    return GatewayConfig.model_validate_json(config_json)


class Supervisor:
    def __init__(self, config: GatewayConfig, source: Source | None = None) -> None:
        """`source` reads the config again (SIGHUP); it must pickle (the children are spawned)."""
        self.processes = config.processes
        self.shared = tempfile.TemporaryDirectory(prefix="pd-gateway-metrics-")
        os.environ[SHARED_DIR_ENV] = self.shared.name  # the children inherit it before importing prometheus_client
        from .server import bind

        # Holds the port (and picks one for port 0) without listening: connections go to the children.
        self.holder = bind(config.listen.host, config.listen.port, reuse_port=True)
        port = self.holder.getsockname()[1]
        listen = config.listen.model_copy(update={"port": port})
        self.child_json = share_limits(config.model_copy(update={"listen": listen}), self.processes).model_dump_json()
        self.port = port
        self.source = _ChildSource(source, listen, self.processes) if source is not None else None
        self.context = multiprocessing.get_context("spawn")
        self.children: list[BaseProcess] = []
        self.stopping = 0

    def start(self, index: int) -> BaseProcess:
        child = self.context.Process(
            target=_child, args=(self.child_json, index, self.source), name=f"pd-gateway-{index}"
        )
        # An ignored signal stays ignored across exec: a SIGHUP while the child imports does not end it
        # (the child's gateway installs its own handler once serving).
        handler = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            child.start()
        finally:
            signal.signal(signal.SIGHUP, handler)
        return child

    def signal(self, signum: int, _frame: object = None) -> None:
        if signum != signal.SIGHUP:
            self.stopping += 1
        for child in self.children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    def run(self) -> int:
        """Start the children, keep them running until a signal, then wait for them to drain."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.signal)
        self.children = [self.start(i) for i in range(self.processes)]
        log.info("%d gateway processes on port %d", self.processes, self.port)
        try:
            while True:
                for i, child in enumerate(self.children):
                    child.join(timeout=0.2 / self.processes)
                    if child.exitcode is not None and not self.stopping:
                        log.warning("gateway process %d exited (%s); starting it again", i, child.exitcode)
                        _mark_dead(self.shared.name, child.pid)
                        time.sleep(RESTART_PAUSE_S)  # a child that cannot start is not restarted in a loop
                        self.children[i] = self.start(i)
                if self.stopping and all(c.exitcode is not None for c in self.children):
                    break
        finally:
            self.holder.close()
            self.shared.cleanup()
        return max((c.exitcode or 0 for c in self.children), default=0)


def _mark_dead(directory: str, pid: int | None) -> None:
    """Its gauges leave the aggregate; its counters stay counted."""
    if pid is not None:
        from .telemetry.shared import forget_process

        forget_process(directory, pid)


def serve_processes(config: GatewayConfig, source: Source | None = None) -> int:
    return Supervisor(config, source).run()
