"""Faults that need the gateway as its own process: signals and memory."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import sse_payloads, wait_until
from workers.launch import free_port


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[asyncio.subprocess.Process, str]]]]:
    """Starts `pd-gateway serve` processes; any still running when the test ends is killed."""
    started: list[asyncio.subprocess.Process] = []

    async def start(workers: list[str], **sections: object) -> tuple[asyncio.subprocess.Process, str]:
        proc, url = await _spawn(tmp_path, workers, **sections)
        started.append(proc)
        return proc, url

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _spawn(tmp_path: Path, workers: list[str], **sections: object) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    config = {"listen": {"host": "127.0.0.1", "port": port}, "pools": [{"name": "dp", "workers": workers}]}
    config.update(sections)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pdcli",
        "serve",
        "--config",
        str(path),
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as c:
        for _ in range(200):
            try:
                if (await c.get(f"{url}/ready")).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("gateway did not become ready")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_sigterm_during_50_streams_lets_all_50_complete(sim, spawn):
    a = await sim(itl_ms=20)
    proc, url = await spawn([a.url], drain_s=10)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 100, "stream": True}
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=60)) as c:
        streams = [asyncio.create_task(c.post(f"{url}/v1/completions", json=body)) for _ in range(50)]
        # Each stream lasts 100 x 20 ms = 2 s; opening 50 takes a loaded 2-core machine a while.
        deadline = time.monotonic() + 1.5
        while a.stats.in_flight < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert a.stats.in_flight == 50
        proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*streams)
    for r in results:
        payloads = sse_payloads(r.content)
        assert not any(isinstance(p, dict) and "error" in p for p in payloads)
        assert sum(1 for p in payloads if isinstance(p, dict)) == 100
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_streams_past_the_drain_deadline_end_with_an_error_event(sim, spawn):
    a = await sim(itl_ms=50)
    proc, url = await spawn([a.url], drain_s=0.5)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 200, "stream": True}
    async with httpx.AsyncClient(timeout=20) as c:
        stream = asyncio.create_task(c.post(f"{url}/v1/completions", json=body))
        await wait_until(lambda: a.stats.in_flight == 1, timeout_s=10)  # streaming
        proc.send_signal(signal.SIGTERM)
        payloads = sse_payloads((await stream).content)
    assert "shutting down" in payloads[-2]["error"]["message"]
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_slow_clients_that_read_nothing_keep_gateway_memory_bounded(sim, spawn):
    # Each stream carries ~20 MB; without backpressure the gateway would hold all of it.
    a = await sim(itl_ms=0, max_model_len=1_000_000)
    proc, url = await spawn([a.url], limits={"max_tokens": 200_000})
    before = _rss_kib(proc.pid)
    port = int(url.rsplit(":", 1)[1])
    body = b'{"model":"sim-model","prompt":"hi","max_tokens":100000,"stream":true}'
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    sockets = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(request)
        sockets.append(s)  # and never read
    # The worker writes until the stalled sockets push back; by then the gateway holds what it will.
    await wait_until(lambda: a.stats.generation_tokens_total > 50_000, timeout_s=20)
    grown_mib = (_rss_kib(proc.pid) - before) / 1024
    for s in sockets:
        s.close()
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 10)
    assert a.stats.generation_tokens_total > 50_000, a.stats.generation_tokens_total
    assert grown_mib < 25, f"gateway grew {grown_mib:.1f} MiB for 5 stalled streams"
