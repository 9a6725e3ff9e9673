"""The issue's reference relay: a plain aiohttp pass-through on uvloop.

    python -m bench.aiohttp_pass --listen 9000 --upstream 8000

An aiohttp server whose one handler forwards the request to the worker with an aiohttp
client session and copies the response body back as it arrives (`iter_any`, one
`write` per read). It chooses no worker, checks nothing and parses no JSON: what it
costs per chunk is what a straightforward Python relay costs on this machine. The
relay benchmark runs the same load through it (`--refs pipe,aiohttp`), on the
gateway's core, next to the gateway and the byte pipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
from aiohttp import web

from .pipe import run_reference, until_signalled

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


def make_app(upstream: str) -> web.Application:
    async def forward(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with session.request(request.method, upstream + request.path_qs, headers=headers, data=body) as up:
            response = web.StreamResponse(status=up.status)
            response.headers.update({k: v for k, v in up.headers.items() if k.lower() not in _HOP_BY_HOP})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application):
        connector = aiohttp.TCPConnector(limit=0)  # one pooled connection per concurrent stream
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as s:
            app["session"] = s
            yield

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(listen_port: int, upstream_port: int, host: str = "127.0.0.1") -> None:
    runner = web.AppRunner(make_app(f"http://{host}:{upstream_port}"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, listen_port, backlog=4096).start()
    await until_signalled().wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    run_reference(serve, "python -m bench.aiohttp_pass", __doc__, argv)


if __name__ == "__main__":
    main()
