"""A worker's health probe: does `GET {url}/health` answer 200?

workers/ checks its own processes with the standard library, so it needs nothing from the
gateway's upstream client (gateway/ and workers/ never import each other). A probe is
rare (a few per second at start-up), so a blocking urllib call in a thread is plenty.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request


def _get_status(url: str, timeout_s: float) -> int:
    # No proxy: workers are probed directly, whatever http_proxy the shell has.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with opener.open(request, timeout=timeout_s) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:  # a non-2xx answer is still an answer
        return int(err.code)


async def health_ok(url: str, timeout_s: float) -> bool:
    """True when `{url}/health` answers 200 within `timeout_s`; False on any other answer or failure."""
    health = url.rstrip("/") + "/health"
    try:
        return await asyncio.to_thread(_get_status, health, timeout_s) == 200
    except (OSError, ValueError):  # refused, reset, timed out (URLError and TimeoutError are OSErrors)
        return False
