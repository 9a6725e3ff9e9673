"""KV transfer between simulated workers (the sim-only /sim/kv endpoints, client side)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

from ..http_client import request
from .engine import KVEntry

LONG_POLL_S = 0.5  # one by-request long-poll round; the decode repeats until kv-wait-s


async def http_get(host: str, port: int, path: str, timeout_s: float) -> tuple[int, bytes]:
    """One GET over a fresh connection (Connection: close); raises OSError/TimeoutError."""
    return await asyncio.wait_for(request(host, port, "GET", path), timeout_s)


def _entry(status: int, body: bytes) -> KVEntry | None:
    if status != 200:
        return None
    try:
        return KVEntry.from_json(json.loads(body))
    except (ValueError, KeyError, TypeError):
        return None


def _kv_path(params: dict[str, Any]) -> tuple[str, int, str]:
    """Where a prefill holds the KV that `params` name; raises KeyError, TypeError, ValueError."""
    rid = str(params["remote_request_id"])
    return str(params["remote_host"]), int(params["remote_port"]), f"/sim/kv/{quote(rid, safe='')}"


async def pull_nixl(params: dict[str, Any], timeout_s: float) -> KVEntry | None:
    """Read-mode pull of a prefill's KV (the decode side of NixlConnector): the read frees it."""
    try:
        host, port, path = _kv_path(params)
        status, body = await http_get(host, port, path, timeout_s)
    except (TimeoutError, KeyError, TypeError, ValueError, OverflowError, OSError, httptools.HttpParserError):
        return None
    entry = _entry(status, body)
    if entry is not None and entry.engine_id != params.get("remote_engine_id"):
        return None
    return entry


async def free_nixl(params: dict[str, Any], timeout_s: float) -> bool:
    """Tell a prefill that nobody will read the KV that `params` name, so it frees it now: what
    vLLM's decode sends (a NIXL notification with nothing read) for a request that ends before
    reading, e.g. one its serving layer refuses."""
    try:
        host, port, path = _kv_path(params)
        status, _ = await asyncio.wait_for(request(host, port, "DELETE", path), timeout_s)
    except (TimeoutError, KeyError, TypeError, ValueError, OverflowError, OSError, httptools.HttpParserError):
        return False
    return status == 200


async def _poll_peer(peer: str, request_id: str, wait_s: float) -> KVEntry | None:
    url = urlsplit(peer if "://" in peer else f"http://{peer}")
    path = f"/sim/kv/by-request/{quote(request_id, safe='')}?wait_ms={int(wait_s * 1000)}"
    try:
        status, body = await http_get(url.hostname or "127.0.0.1", url.port or 80, path, wait_s + 2)
    except (TimeoutError, OSError, httptools.HttpParserError):
        await asyncio.sleep(min(wait_s, 0.05))  # peer down: don't spin
        return None
    return _entry(status, body)


async def wait_legacy(peers: list[str], request_id: str, wait_s: float) -> KVEntry | None:
    """Decode side of the Neuron immediate-first-token protocol: long-poll every peer for
    the KV that the prefill stores under the gateway's X-Request-Id."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while peers and (left := deadline - loop.time()) > 0:
        tasks = [asyncio.ensure_future(_poll_peer(p, request_id, min(LONG_POLL_S, left))) for p in peers]
        try:
            for fut in asyncio.as_completed(tasks):
                entry = await fut
                if entry is not None:
                    return entry
        finally:
            for t in tasks:
                t.cancel()
    return None
