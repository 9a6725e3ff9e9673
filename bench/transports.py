"""Upstream client choice, measured: CPU per relayed chunk for aiohttp, httpx and gateway.http1.

Reads the same streams from a simulated worker (in a subprocess on the other core) with
each client, in this process, and prints this process's CPU-seconds per 1,000 chunks.

    python -m bench.transports [--streams 32] [--tokens 128] [--itl-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time

import aiohttp
import httpx

from gateway.http1 import ConnectionPool


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _aiohttp(url: str, body: dict, streams: int) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one() -> int:
            async with s.post(url, json=body) as resp:
                return sum([1 async for _ in resp.content.iter_any()])

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def _httpx(url: str, body: dict, streams: int) -> int:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:

        async def one() -> int:
            async with c.stream("POST", url, json=body) as resp:
                return sum([1 async for _ in resp.aiter_raw()])

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def _http1(url: str, body: dict, streams: int) -> int:
    """The gateway's own client: chunks are counted in the socket callback, as the relay sends them."""
    pool = ConnectionPool(connect_timeout_s=5)
    payload = json.dumps(body).encode()

    async def one() -> int:
        resp = await pool.request("POST", url, {"content-type": "application/json"}, payload)
        await resp.head
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        count = [0]

        def on_data(_: bytes) -> None:
            count[0] += 1

        resp.stream(on_data, lambda exc: done.set_result(None))
        await done
        resp.release()
        return count[0]

    try:
        return sum(await asyncio.gather(*(one() for _ in range(streams))))
    finally:
        pool.close()


async def _measure(name: str, fn, url: str, body: dict, streams: int, rounds: int) -> None:  # type: ignore[no-untyped-def]
    await fn(url, body, streams)  # warm-up: connections, imports
    cpu0, reads = _cpu(), 0
    for _ in range(rounds):
        reads += await fn(url, body, streams)
    spent = _cpu() - cpu0
    print(f"{name:8s} {reads:8d} reads  {spent:6.2f} CPU-s  {1000 * spent / reads:.4f} CPU-s per 1k chunks")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--itl-ms", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port", type=int, default=18931)
    args = p.parse_args(argv)
    argv = [sys.executable, "-m", "workers.sim", "--port", str(args.port), "--itl-ms", str(args.itl_ms)]
    sim = subprocess.Popen(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
        os.sched_setaffinity(sim.pid, {1 % os.cpu_count()})  # type: ignore[operator]
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{args.port}/v1/completions"
        body = {"model": "sim-model", "prompt": "hi", "max_tokens": args.tokens, "stream": True}
        import uvloop

        for name, fn in (("aiohttp", _aiohttp), ("httpx", _httpx), ("http1", _http1)):
            uvloop.run(_measure(name, fn, url, body, args.streams, args.rounds))
    finally:
        sim.terminate()
        sim.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
