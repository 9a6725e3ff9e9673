"""`pd-gateway serve` with no config: two simulated replicas and a simulated 1P1D pool, and
first log lines that say where the dashboard is and how to send a disaggregated request."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import httpx

from tests.conftest import sse_payloads, wait_until
from workers.launch import free_port


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def test_embedded_default_serves_dp_and_pd_and_says_how(tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    env = dict(os.environ, PD_GATEWAY_HUGEPAGES="0")
    with log.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pdcli", "serve", "--port", str(port), env=env, stdout=out, stderr=out
        )
    try:
        await wait_until(lambda: any("data-parallel request" in line for line in _lines(log)), timeout_s=30)
        first = _lines(log)[:4]
        url = f"http://localhost:{port}"
        assert f"{url}/dashboard" in first[1]
        assert "disaggregated" in first[2]
        # the logged command works as printed: its body goes to the logged URL
        command = re.search(r"curl -N (\S+) .* -d '(.*)'$", first[2])
        assert command is not None, first[2]
        body = json.loads(command.group(2))
        assert body["model"] == "sim-pd-model"
        async with httpx.AsyncClient(timeout=10) as c:
            for _ in range(300):
                try:
                    if (await c.get(f"{url}/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            pd = await c.post(command.group(1), json=body)
            assert sse_payloads(pd.content)[-1] == "[DONE]"
            dp = await c.post(f"{url}/v1/completions", json={**body, "model": "sim-model"})
            assert sse_payloads(dp.content)[-1] == "[DONE]"
            status = (await c.get(f"{url}/dashboard/status")).json()
            roles = {p["name"]: sorted(e["role"] for e in p["endpoints"]) for p in status["pools"]}
            assert roles == {"sim": ["replica", "replica"], "sim-pd": ["decode", "prefill"]}
            assert (await c.get(f"{url}/dashboard")).headers["content-type"].startswith("text/html")
            metrics = (await c.get(f"{url}/metrics")).text
            assert re.search(r'pd_gateway_pd_prefill_seconds_count\{[^}]*pool="sim-pd"[^}]*\} 1\.0', metrics)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
