"""Fixtures: simulated workers and a gateway, all serving for real on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from gateway.config import parse_config
from gateway.server import RunningGateway, start_gateway
from workers.sim import SimServer, start_sim

FAST_HEALTH = {"interval_s": 0.2, "timeout_s": 0.5, "healthy_threshold": 1, "unhealthy_threshold": 1}


@pytest.fixture
async def sim() -> AsyncIterator[Callable[..., Awaitable[SimServer]]]:
    started: list[SimServer] = []

    async def start(**config: object) -> SimServer:
        server = await start_sim(dict(config))
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    started: list[RunningGateway] = []

    async def start(pools: list[dict], **sections: object) -> RunningGateway:
        config = {"listen": {"host": "127.0.0.1", "port": 0}, "health": FAST_HEALTH, "pools": pools}
        config.update(sections)
        gw = await start_gateway(parse_config(config))
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0, step_s: float = 0.005) -> float:
    """Seconds until predicate() held; fails the test after timeout_s."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, "condition not reached in time"
        await asyncio.sleep(step_s)
    return time.monotonic() - start


def sse_payloads(body: bytes) -> list[object]:
    """Parse an SSE body strictly: only `data: ` events, each followed by a blank line."""
    assert body.endswith(b"\n\n"), body[-50:]
    out: list[object] = []
    for event in body[:-2].split(b"\n\n"):
        assert event.startswith(b"data: "), event
        assert b"\n" not in event, event
        data = event[6:]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    assert out[-1] == "[DONE]"
    return out


def stream_text(payloads: list[object]) -> str:
    text = []
    for p in payloads:
        if isinstance(p, dict):
            for c in p.get("choices", []):
                text.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return "".join(text)
