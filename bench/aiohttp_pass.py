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

import argparse
import asyncio
from collections.abc import Sequence

import aiohttp
from aiohttp import web

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


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.aiohttp_pass", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = asyncio.new_event_loop
    web.run_app(make_app(f"http://{args.host}:{args.upstream}"), host=args.host, port=args.listen,
                access_log=None, print=None, backlog=4096, loop=loop_factory())


if __name__ == "__main__":
    main()
