"""The benchmark's floor reference: a byte-pipe TCP proxy on uvloop.

    python -m bench.pipe --listen 9000 --upstream 8000

It parses nothing and copies bytes both ways, one upstream connection per client
connection, so the CPU it spends per relayed chunk and the latency it adds are what
the machine's loopback TCP stack and event loop cost by themselves: no gateway written
in Python on this machine can do better.  The relay benchmark runs the same load through
it, on the gateway's core, and prints it next to the gateway's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence


class _Upstream(asyncio.Protocol):
    def __init__(self, down: asyncio.Transport) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        self.down.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.close()


class _Downstream(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.pending: list[bytes] | None = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            up, _ = await loop.create_connection(lambda: _Upstream(self.transport), self.host, self.port)
        except OSError:
            self.transport.close()
            return
        self.up = up  # type: ignore[assignment]
        for data in self.pending or []:
            up.write(data)
        self.pending = None

    def data_received(self, data: bytes) -> None:
        if self.pending is not None:
            self.pending.append(data)
        elif self.up is not None:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


async def serve(listen_port: int, upstream_port: int, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Downstream(host, upstream_port), host, listen_port, backlog=4096, reuse_address=True
    )
    await until_signalled().wait()
    server.close()


def until_signalled() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run_reference(
    serve: Callable[[int, int, str], Awaitable[None]], prog: str, doc: str | None, argv: Sequence[str] | None
) -> None:
    """The command line the benchmark gives a reference relay: --listen PORT --upstream PORT."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.listen, args.upstream, args.host))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.listen, args.upstream, args.host))


def main(argv: Sequence[str] | None = None) -> None:
    run_reference(serve, "python -m bench.pipe", __doc__, argv)


if __name__ == "__main__":
    main()
