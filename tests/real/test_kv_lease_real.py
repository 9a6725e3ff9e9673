"""The prefill's KV lease on real vLLM (1P1D, NixlConnector): requests whose decode leg never
reads the KV leave nothing held on the prefill.

The decode is the real vLLM decode behind a small proxy that refuses, or holds without an
answer, the requests the test names, and passes everything else through (health checks, and
the gateway's lease releases, which the real decode then turns into a free on the prefill).
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from gateway.disagg.nixl_lease import RELEASE_MODEL
from tests.conftest import wait_until

MODEL = "tiny"
COUNT = 50
_USAGE = re.compile(r"^vllm:kv_cache_usage_perc\{[^}]*\} ([0-9.e+-]+)$", re.M)
REFUSAL = json.dumps(
    {"error": {"message": "refused by the test's proxy", "type": "BadRequestError", "param": None, "code": 400}}
).encode()


class DecodeProxy:
    """In front of the real decode: `mode` "refuse" answers 400 to client requests, "hold" keeps
    them unanswered until the gateway hangs up; releases and GETs go through to the decode."""

    def __init__(self, decode_url: str) -> None:
        self.decode_url = decode_url
        self.mode = "refuse"
        self.held = 0
        self.passed: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.client = httpx.AsyncClient(timeout=60)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        await self.client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                length = next((int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                if method == b"POST" and json.loads(body).get("model") != RELEASE_MODEL:
                    if self.mode == "hold":
                        self.held += 1
                        await reader.read()  # until the gateway hangs up
                        return
                    self._write(writer, 400, REFUSAL)
                    continue
                self.passed.append(body)
                r = await self.client.request(
                    method.decode(), self.decode_url + path.decode(), content=body,
                    headers={"content-type": "application/json"},
                )  # fmt: skip
                self._write(writer, r.status_code, r.content)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _write(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )


async def _usage(client: httpx.AsyncClient, url: str) -> float:
    match = _USAGE.search((await client.get(f"{url}/metrics")).text)
    assert match, "no vllm:kv_cache_usage_perc"
    return float(match.group(1))


def _body(i: int) -> dict:
    words = ("river", "stone", "cloud", "lamp", "field", "door", "song", "road")
    prompt = " ".join(words[(i * 7 + k) % len(words)] + str(i) for k in range(24))
    return {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0}


async def _back_to_idle(client: httpx.AsyncClient, url: str, idle: float) -> float:
    """Seconds until the prefill's KV usage is back to `idle`; fails after 2 s."""
    start = time.monotonic()
    while (usage := await _usage(client, url)) > idle:
        assert time.monotonic() - start < 2.0, f"prefill KV usage {usage} > idle {idle} after 2 s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.slow
async def test_refused_and_abandoned_decodes_leave_no_kv_held_on_the_prefill(real_gateway, vllm_pd_pair):
    proxy = DecodeProxy(vllm_pd_pair.decode.url)
    proxy_url = await proxy.start()
    prefill = vllm_pd_pair.prefill.url
    figures: dict[str, float] = {}
    try:
        gw = await real_gateway(
            [
                {
                    "name": "pd",
                    "kind": "pd",
                    "disaggregate_min_tokens": 0,
                    "protocol": "nixl",
                    "prefill": [prefill],
                    "decode": [proxy_url],
                }
            ]
        )
        async with httpx.AsyncClient(timeout=120) as c:
            idle = await _usage(c, prefill)
            figures["idle_usage"] = idle

            proxy.mode = "refuse"  # the decode refuses: 50 requests, 8 at a time
            sem = asyncio.Semaphore(8)

            async def refused(i: int) -> int:
                async with sem:
                    return (await c.post(f"{gw.url}/v1/completions", json=_body(i))).status_code

            t0 = time.monotonic()
            codes = await asyncio.gather(*(refused(i) for i in range(COUNT)))
            figures["refused_batch_s"] = time.monotonic() - t0
            assert codes == [400] * COUNT
            figures["refused_to_idle_s"] = await _back_to_idle(c, prefill, idle)

            proxy.mode = "hold"  # 50 clients leave while their decode leg waits
            tasks = [
                asyncio.create_task(c.post(f"{gw.url}/v1/completions", json=_body(COUNT + i))) for i in range(COUNT)
            ]
            await wait_until(lambda: proxy.held == COUNT, timeout_s=120, step_s=0.05)
            figures["held_usage"] = await _usage(c, prefill)
            assert figures["held_usage"] > idle  # the prefill holds the 50 leases now
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            figures["left_to_idle_s"] = await _back_to_idle(c, prefill, idle)
        releases = [json.loads(b) for b in proxy.passed if b]
        assert sum(r.get("model") == RELEASE_MODEL for r in releases) == 2 * COUNT
    finally:
        await proxy.close()
        print("\nKV lease figures:", json.dumps({k: round(v, 4) for k, v in figures.items()}))


async def test_vllm_decode_frees_a_lease_only_when_its_serving_code_refuses(vllm_pd_pair):
    """Why the gateway checks up front and releases with a model nobody serves: a request the
    decode's request validators refuse frees nothing on the prefill; one its serving code
    refuses (an unknown model) frees the prefill's blocks at once."""
    prefill, decode = vllm_pd_pair.prefill.url, vllm_pd_pair.decode.url
    async with httpx.AsyncClient(timeout=120) as c:
        idle = await _usage(c, prefill)
        p = await c.post(
            f"{prefill}/v1/completions",
            json={**_body(999), "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}},
        )
        params = p.json()["kv_transfer_params"]
        held = await _usage(c, prefill)
        assert held > idle
        refused = await c.post(
            f"{decode}/v1/completions",
            json={**_body(999), "stream_options": {"include_usage": True}, "kv_transfer_params": params},
        )
        assert refused.status_code == 400
        await asyncio.sleep(1.0)  # what the validators refused is still held a second later
        assert await _usage(c, prefill) == held
        release = await c.post(
            f"{decode}/v1/completions",
            json={"model": RELEASE_MODEL, "prompt": "release", "max_tokens": 1, "kv_transfer_params": params},
        )
        assert release.status_code == 404
        print(f"\nlease released by vLLM's decode in {await _back_to_idle(c, prefill, idle):.3f}s")
