"""The gateway in front of two real vLLM CPU replicas."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.conftest import sse_payloads, stream_text

MODEL = "tiny"
PROMPTS = ["The old man watches the long road at night", "a robot paints the blue door", "the river"]
CHAT = [{"role": "user", "content": "Tell me a story about the quiet song near the sea."}]
GREEDY = {"temperature": 0, "max_tokens": 16}


@pytest.fixture
async def dp_gateway(real_gateway, vllm_replicas):
    return await real_gateway([{"name": "dp", "workers": [s.url for s in vllm_replicas]}])


def _text(answer: dict, i: int = 0) -> str:
    choice = answer["choices"][i]
    return choice["text"] if "text" in choice else choice["message"]["content"]


ROUTES = [("completions", {"prompt": PROMPTS[0]}), ("chat/completions", {"messages": CHAT})]


@pytest.mark.parametrize(("route", "extra"), ROUTES)
async def test_greedy_streaming_text_equals_non_streaming(dp_gateway, route, extra):
    body = {"model": MODEL, **GREEDY, **extra}
    async with httpx.AsyncClient(timeout=120) as c:
        for _ in range(2):  # both replicas (round-robin)
            plain = (await c.post(f"{dp_gateway.url}/v1/{route}", json=body)).json()
            streamed = await c.post(f"{dp_gateway.url}/v1/{route}", json={**body, "stream": True})
            assert streamed.status_code == 200
            assert stream_text(sse_payloads(streamed.content)) == _text(plain)
    assert all(e.outstanding == 0 for e in dp_gateway.gateway.endpoints)


async def test_openai_client_chat_stream_has_exactly_one_usage_chunk(dp_gateway):
    oai = openai.AsyncOpenAI(base_url=f"{dp_gateway.url}/v1", api_key="unused", timeout=120)
    stream = await oai.chat.completions.create(
        model=MODEL, messages=CHAT, stream=True, temperature=0, max_tokens=12, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert usage[0].completion_tokens == 12 and usage[0].prompt_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    await oai.close()


async def test_completions_with_a_list_of_prompts(dp_gateway):
    async with httpx.AsyncClient(timeout=120) as c:
        url = f"{dp_gateway.url}/v1/completions"
        batch = (await c.post(url, json={"model": MODEL, "prompt": PROMPTS, **GREEDY})).json()
        singles = [(await c.post(url, json={"model": MODEL, "prompt": p, **GREEDY})).json() for p in PROMPTS]
    assert sorted(ch["index"] for ch in batch["choices"]) == [0, 1, 2]
    by_index = {ch["index"]: ch["text"] for ch in batch["choices"]}
    assert [by_index[i] for i in range(3)] == [_text(s) for s in singles]


async def test_bad_model_is_404(dp_gateway):
    async with httpx.AsyncClient(timeout=30) as c:
        resp = await c.post(f"{dp_gateway.url}/v1/completions", json={"model": "nope", "prompt": "x"})
    assert resp.status_code == 404 and "nope" in resp.json()["error"]["message"]
    async with httpx.AsyncClient(timeout=30) as c:
        models = (await c.get(f"{dp_gateway.url}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [MODEL]


async def test_worker_4xx_passes_through(dp_gateway, vllm_replicas):
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 100_000}  # beyond max-model-len
    async with httpx.AsyncClient(timeout=30) as c:
        direct = await c.post(f"{vllm_replicas[0].url}/v1/completions", json=body)
        via = await c.post(f"{dp_gateway.url}/v1/completions", json=body)
    assert direct.status_code == via.status_code == 400
    assert json.loads(via.content) == json.loads(direct.content)


async def _generated(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(f"{url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:generation_tokens_total")
    )


async def _settled_generated(urls: list[str]) -> float:
    """The replicas' generated-token count once it stops moving: a token still being made
    for an earlier request (or counted late) must not be put down to this one."""
    last = -1.0
    for _ in range(60):
        now = sum([await _generated(u) for u in urls])
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.5)
    raise AssertionError("the replicas kept generating tokens with no request in flight")


async def test_client_disconnect_aborts_the_real_request(dp_gateway, vllm_replicas):
    body = {"model": MODEL, "prompt": PROMPTS[1], "max_tokens": 400, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120) as c:
        started = time.monotonic()
        await c.post(f"{dp_gateway.url}/v1/completions", json=body)
        full_s = time.monotonic() - started  # how long the whole request takes when nobody leaves
        before = await _settled_generated([s.url for s in vllm_replicas])
        async with c.stream("POST", f"{dp_gateway.url}/v1/completions", json={**body, "stream": True}) as resp:
            async for _ in resp.aiter_bytes():
                break
    await asyncio.sleep(full_s + 2)  # unaborted, all 400 tokens would be counted by now
    generated = sum([await _generated(s.url) for s in vllm_replicas]) - before
    assert 0 < generated < 200
    assert all(e.outstanding == 0 for e in dp_gateway.gateway.endpoints)


async def test_killing_one_replica_under_load_fails_no_unstarted_request(real_gateway, vllm_replicas):
    gw = await real_gateway([{"name": "dp", "workers": [s.url for s in vllm_replicas]}])
    victim = vllm_replicas[1]
    outcomes: list[str] = []

    async def one(c: httpx.AsyncClient, i: int) -> None:
        body = {"model": MODEL, "prompt": PROMPTS[i % 3], "max_tokens": 24, "stream": True}
        async with c.stream("POST", f"{gw.url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                outcomes.append(f"status {resp.status_code}")
                return
            body_bytes, started = b"", False
            async for part in resp.aiter_bytes():
                started = True
                body_bytes += part
        failed = any(isinstance(p, dict) and "error" in p for p in sse_payloads(body_bytes))
        outcomes.append(("started-then-failed" if started else "failed") if failed else "ok")

    async def load(c: httpx.AsyncClient, worker: int) -> None:
        for i in range(6):
            await one(c, worker * 10 + i)

    async with httpx.AsyncClient(timeout=180) as c:
        tasks = [asyncio.create_task(load(c, w)) for w in range(4)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(victim.stop, 0)  # the whole process group, at once
        await asyncio.gather(*tasks)
    try:
        assert [o for o in outcomes if o not in ("ok", "started-then-failed")] == []
        assert outcomes.count("ok") >= 20
    finally:
        await victim.restart()
