"""1P1D with NixlConnector on real vLLM CPU servers, through the gateway."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.conftest import sse_payloads, stream_text

MODEL = "tiny"
PROMPTS = [
    "The old man watches the long road at night, and the river follows a small bird",
    "a robot paints the blue door while the children sing",
]
CHAT = [{"role": "user", "content": "Tell me a story about the quiet song near the sea."}]
GREEDY = {"temperature": 0, "max_tokens": 16}
EXTERNAL, LOCAL = "external_kv_transfer", "local_compute"


@pytest.fixture
async def pd_gateway(real_gateway, vllm_pd_pair):
    return await real_gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": "nixl",
                "prefill": [vllm_pd_pair.prefill.url],
                "decode": [vllm_pd_pair.decode.url],
            }
        ]
    )


def _text(answer: dict) -> str:
    choice = answer["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


async def _prompt_tokens_by_source(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(f"{url}/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'vllm:prompt_tokens_by_source_total\{.*source="(\w+)".*\} ([\d.e+]+)$', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


@pytest.mark.parametrize(
    ("route", "extra"),
    [
        ("completions", {"prompt": PROMPTS[0]}),
        ("completions", {"prompt": PROMPTS[1]}),
        ("chat/completions", {"messages": CHAT}),
    ],
)
async def test_disaggregated_output_equals_colocated(pd_gateway, vllm_colocated, route, extra):
    body = {"model": MODEL, **GREEDY, **extra}
    async with httpx.AsyncClient(timeout=120) as c:
        want = (await c.post(f"{vllm_colocated.url}/v1/{route}", json=body)).json()
        got = await c.post(f"{pd_gateway.url}/v1/{route}", json=body)
        streamed = await c.post(f"{pd_gateway.url}/v1/{route}", json={**body, "stream": True})
    assert got.status_code == 200, got.text
    assert _text(got.json()) == _text(want)
    assert got.json()["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
    assert stream_text(sse_payloads(streamed.content)) == _text(want)


async def test_the_kv_really_moved(pd_gateway, vllm_pd_pair):
    decode = vllm_pd_pair.decode.url
    before = await _prompt_tokens_by_source(decode)
    body = {"model": MODEL, "prompt": PROMPTS[1] + " and then the end", **GREEDY}
    async with httpx.AsyncClient(timeout=120) as c:
        answer = (await c.post(f"{pd_gateway.url}/v1/completions", json=body)).json()
    prompt_len = answer["usage"]["prompt_tokens"]
    after = before
    for _ in range(50):  # metrics reach the API process a moment after the response
        after = await _prompt_tokens_by_source(decode)
        if after.get(EXTERNAL, 0) > before.get(EXTERNAL, 0):
            break
        await asyncio.sleep(0.1)
    external = after.get(EXTERNAL, 0) - before.get(EXTERNAL, 0)
    local = after.get(LOCAL, 0) - before.get(LOCAL, 0)
    assert (external, local) == (prompt_len, 0), (before, after, prompt_len)


async def test_16_concurrent_disaggregated_streams_complete(pd_gateway):
    async def one(c: httpx.AsyncClient, i: int) -> list:
        body = {"model": MODEL, "prompt": f"{PROMPTS[i % 2]} {i}", "max_tokens": 12, "stream": True}
        resp = await c.post(f"{pd_gateway.url}/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        return sse_payloads(resp.content)

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=32)) as c:
        results = await asyncio.gather(*(one(c, i) for i in range(16)))
    errors = [p for r in results for p in r if isinstance(p, dict) and "error" in p]
    assert errors == []
    assert all(len(stream_text(r)) > 0 for r in results)


async def test_a_stopped_prefill_falls_back_to_the_decode_then_goes_disaggregated_again(pd_gateway, vllm_pd_pair):
    """Decode-local fallback: with its prefill stopped the pool keeps answering (the decode
    computes the prompt itself); once the prefill is back, requests go disaggregated again."""
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 8, "stream": True}
    local = pd_gateway.gateway.telemetry.local
    decode = vllm_pd_pair.decode.url
    async with httpx.AsyncClient(timeout=120) as c:
        assert (await c.post(f"{pd_gateway.url}/v1/completions", json=body)).status_code == 200
        running = [asyncio.create_task(c.post(f"{pd_gateway.url}/v1/completions", json=body)) for _ in range(4)]
        await asyncio.sleep(0.05)
        await asyncio.to_thread(vllm_pd_pair.prefill.stop, 0)
        for resp in await asyncio.gather(*running):
            assert resp.status_code == 200, resp.text  # a prefill leg that failed fell back
            assert sse_payloads(resp.content)[-1] == "[DONE]"
        for i in range(6):
            after = await c.post(f"{pd_gateway.url}/v1/completions", json={**body, "prompt": f"{PROMPTS[1]} {i}"})
            assert after.status_code == 200, after.text
            assert stream_text(sse_payloads(after.content))
        assert sum(local.values()) >= 6 and set(local) <= {("pd", "prefill_failed"), ("pd", "no_prefill")}
        await vllm_pd_pair.restart()
        for _ in range(100):
            if pd_gateway.gateway.pools[0].groups["prefill"][0].healthy:
                break
            await asyncio.sleep(0.1)
        fallbacks = sum(local.values())
        before = (await _prompt_tokens_by_source(decode)).get(EXTERNAL, 0)
        again = await c.post(f"{pd_gateway.url}/v1/completions", json={**body, "prompt": PROMPTS[1] + " again"})
        assert again.status_code == 200 and sse_payloads(again.content)[-1] == "[DONE]"
        for _ in range(50):
            if (await _prompt_tokens_by_source(decode)).get(EXTERNAL, 0) > before:
                break
            await asyncio.sleep(0.1)
    assert sum(local.values()) == fallbacks  # disaggregated again: the KV came over NIXL
    assert (await _prompt_tokens_by_source(decode)).get(EXTERNAL, 0) > before
