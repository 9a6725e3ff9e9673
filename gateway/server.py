"""Running the gateway under uvicorn, in the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket

import uvicorn

from . import protocol
from .app import create_app
from .config import ConfigError, GatewayConfig
from .gateway import Gateway
from .reload import Source

log = logging.getLogger("pd_gateway")


class RunningGateway:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task, sock: socket.socket) -> None:
        self.server = server
        self.task = task
        self.port = sock.getsockname()[1]
        self.host = sock.getsockname()[0]
        self.app = server.config.app

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def gateway(self) -> Gateway:
        return self.app.state.gateway  # type: ignore[union-attr]

    async def close(self) -> None:
        self.server.should_exit = True
        await self.task

    async def wait(self) -> None:
        await self.task


def _on_signal(server: uvicorn.Server) -> None:
    """First signal: drain (stop accepting, let streams finish); second: stop now."""
    if server.should_exit:
        server.force_exit = True
    server.should_exit = True


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """`reuse_port`: one of several processes' sockets on one port (the kernel spreads the
    connections over them)."""
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
    # IPPROTO_TCP, and without it every response's second write waits 40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def http_protocol(config: GatewayConfig) -> type[protocol.GatewayProtocol] | str:
    if config.listen.http == "uvicorn":
        return "httptools"
    if not protocol.supported():
        log.warning(
            "uvicorn %s is not a release the gateway's HTTP protocol was tested with (%s): serving on "
            "plain uvicorn, without the short path and the request-head bounds",
            uvicorn.__version__,
            ", ".join(f"{a}.{b}.x" for a, b in protocol.TESTED_UVICORN),
        )
        return "httptools"
    return protocol.GatewayProtocol


def _on_hangup(gateway: Gateway) -> None:
    """SIGHUP: read the config again and apply it; an invalid one changes nothing."""
    try:
        gateway.reloader.reload()
    except ConfigError as err:
        log.error("config reload refused, the running config is kept: %s", err)


async def start_gateway(
    config: GatewayConfig,
    install_signal_handlers: bool = False,
    source: Source | None = None,
    reuse_port: bool = False,
) -> RunningGateway:
    """Start serving on config.listen (port 0 picks a free port); returns once accepting.
    `source` reads the config again (SIGHUP, `POST /admin/config/reload`); `reuse_port`: one of
    several processes on the port (gateway/processes.py)."""
    sock = bind(config.listen.host, config.listen.port, reuse_port)
    app = create_app(config, source)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=http_protocol(config),
            loop="none",
            lifespan="on",
            access_log=False,
            server_header=False,  # one header less to write per response
            proxy_headers=False,  # the gateway reads no forwarded-for headers; one ASGI layer less
            log_level=config.log_level,
            # JSON logs: uvicorn's own lines go through the root handler too (gateway.access_log)
            log_config=None if config.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
            timeout_graceful_shutdown=config.drain_s,  # type: ignore[arg-type]  # a float works
        )
    )
    # uvicorn re-raises the signal after its shutdown, which makes the exit status 143;
    # a drained gateway should exit 0, so signals are handled here instead.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    if install_signal_handlers:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, server)
        loop.add_signal_handler(signal.SIGHUP, _on_hangup, app.state.gateway)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("gateway exited during start-up")
        await asyncio.sleep(0.01)
    if config.tuning.gc_freeze:
        # What start-up built (modules, FastAPI's routes and models) lives as long as the process:
        # kept out of the collector's sweeps, it costs the older generations' collections nothing
        # (-10% gateway CPU per chunk at 32 streams in A/B runs).
        gc.collect()
        gc.freeze()
    return RunningGateway(server, task, sock)
