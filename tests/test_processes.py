"""`processes: N`: several gateway processes on one port, one /metrics, drained as one (issue 26)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.processes import share_limits
from tests.conftest import sse_payloads, wait_until
from tests.test_process_faults import spawn  # noqa: F401  (the fixture)


def test_admission_limits_are_shared_out_so_they_mean_the_same_for_the_whole() -> None:
    config = parse_config(
        {"pools": [{"name": "p", "workers": ["http://w"]}], "processes": 3,
         "limits": {"max_inflight": 100, "queue": 10, "max_inflight_per_worker": 8}}
    )  # fmt: skip
    child = share_limits(config, 3)
    assert (child.limits.max_inflight, child.limits.queue, child.limits.max_inflight_per_worker) == (34, 4, 3)
    assert child.processes == 1 and child.limits.max_body_bytes == config.limits.max_body_bytes


def _children(pid: int) -> list[int]:
    """The gateway processes the supervisor started (not multiprocessing's resource tracker)."""
    pids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def _samples(text: str, name: str) -> list[tuple[dict, float]]:
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


async def _fresh(method: str, url: str, **kw: object) -> httpx.Response:
    """On a new connection: the kernel picks the process for each one."""
    async with httpx.AsyncClient(timeout=20) as c:
        return await c.request(method, url, **kw)  # type: ignore[arg-type]


async def test_two_processes_serve_one_port_count_as_one_and_drain_as_one(sim, spawn) -> None:  # noqa: F811
    a, b = await sim(itl_ms=20), await sim(itl_ms=20)
    proc, url = await spawn([a.url, b.url], processes=2, drain_s=10)
    assert len(_children(proc.pid)) == 2
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}

    async def all_ready() -> bool:
        codes = [(await _fresh("POST", url + "/v1/completions", json=body)).status_code for _ in range(6)]
        return codes == [200] * 6

    for _ in range(100):  # the second process may still be starting when the first is ready
        if await all_ready():
            break
        await asyncio.sleep(0.05)
    before = _samples((await _fresh("GET", url + "/metrics")).text, "pd_gateway_requests_total")
    done = sum(v for labels, v in before if labels["status"] == "200")
    for _ in range(20):
        assert (await _fresh("POST", url + "/v1/completions", json=body)).status_code == 200
    for _ in range(4):  # whichever process answers the scrape counts every process's requests
        text = (await _fresh("GET", url + "/metrics")).text
        total = sum(v for labels, v in _samples(text, "pd_gateway_requests_total") if labels["status"] == "200")
        assert total == done + 20
        healthy = _samples(text, "pd_gateway_endpoint_healthy")
        assert sorted(labels["endpoint"] for labels, v in healthy if v == 1.0) == sorted([a.url, b.url])

    stream = {**body, "max_tokens": 50, "stream": True}
    streams = [asyncio.create_task(_fresh("POST", url + "/v1/completions", json=stream)) for _ in range(8)]
    await wait_until(lambda: a.stats.in_flight + b.stats.in_flight == 8, timeout_s=10)
    proc.send_signal(signal.SIGTERM)
    for r in await asyncio.gather(*streams):
        assert r.status_code == 200 and sse_payloads(r.content)[-1] == "[DONE]"
    assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_sighup_reloads_every_process_and_the_supervisor_lives_on(sim, spawn, tmp_path) -> None:  # noqa: F811
    a = await sim()
    proc, url = await spawn([a.url], processes=2, auth={"api_keys": ["k1"]})
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}

    async def codes(key: str) -> list[int]:  # fresh connections reach both processes
        headers = {"authorization": f"Bearer {key}"}
        return [
            (await _fresh("POST", url + "/v1/completions", json=body, headers=headers)).status_code for _ in range(8)
        ]

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "auth": {"api_keys": ["k2"]}}))
    for _ in range(100):  # again until it took: a process still starting reads the file anew, or waits
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.05)
        if await codes("k2") == [200] * 8:
            break
    assert await codes("k2") == [200] * 8 and await codes("k1") == [401] * 8
    assert proc.returncode is None and len(_children(proc.pid)) == 2
