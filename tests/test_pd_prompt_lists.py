"""A list of prompts to a PD pool: each prompt its own P->D request, the answers merged as one
vLLM server answers the list (choices numbered prompt x n + choice, usage summed, one stream)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import sse_payloads, wait_until

PROMPTS = ["the first prompt of the list", "a second one, a little longer than the first", "third"]


async def _pd(sim, gateway, protocol: str = "nixl", **pool: object):
    p = await sim(role="prefill", kv_protocol=protocol)
    d = await sim(role="decode", kv_protocol=protocol, kv_peers=[p.url])
    colo = await sim()
    gw = await gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": protocol,
                "prefill": [p.url],
                "decode": [d.url],
                **pool,
            }
        ]
    )
    await wait_until(lambda: gw.gateway.ready)
    return p, d, colo, gw


def _by_index(payloads: list) -> dict[int, str]:
    out: dict[int, str] = {}
    for s in payloads:
        for c in s["choices"] if isinstance(s, dict) else []:
            out[c["index"]] = out.get(c["index"], "") + c["text"]
    return out


@pytest.mark.parametrize("protocol", ["nixl", "neuron-legacy"])
async def test_a_prompt_list_gets_every_answer_in_order_as_a_colocated_worker_gives_them(
    sim, gateway, client, protocol
):
    p, d, colo, gw = await _pd(sim, gateway, protocol)
    body = {"model": "sim-model", "prompt": PROMPTS, "max_tokens": 6, "n": 2}
    want = (await client.post(f"{colo.url}/v1/completions", json=body)).json()
    got = await client.post(f"{gw.url}/v1/completions", json=body)
    assert got.status_code == 200, got.text
    answer = got.json()
    assert [(c["index"], c["text"]) for c in answer["choices"]] == [(c["index"], c["text"]) for c in want["choices"]]
    assert len(answer["choices"]) == 6
    assert answer["usage"] == want["usage"]
    assert p.stats.requests_total == 3 and d.stats.requests_total == 3  # one P->D request per prompt


async def test_a_streamed_prompt_list_is_one_stream_with_indices_and_one_usage_chunk(sim, gateway, client):
    p, d, colo, gw = await _pd(sim, gateway)
    body = {
        "model": "sim-model",
        "prompt": PROMPTS,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    want = sse_payloads((await client.post(f"{colo.url}/v1/completions", json=body)).content)
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    got = sse_payloads(resp.content)
    assert _by_index(got) == _by_index(want) and len(_by_index(got)) == 3
    usage = [s["usage"] for s in got if isinstance(s, dict) and s["choices"] == []]
    assert usage == [s["usage"] for s in want if isinstance(s, dict) and s["choices"] == []]
    assert len({s["id"] for s in got if isinstance(s, dict)}) == 1
    assert got.count("[DONE]") == 1
    finishes = [c["index"] for s in got if isinstance(s, dict) for c in s["choices"] if c["finish_reason"]]
    assert sorted(finishes) == [0, 1, 2]


async def test_a_prompt_the_workers_refuse_fails_the_list_with_their_answer(sim, gateway, client):
    p = await sim(role="prefill", max_model_len=64)
    d = await sim(role="decode", max_model_len=64)
    gw = await gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": "nixl",
                "prefill": [p.url],
                "decode": [d.url],
            }
        ]
    )
    for stream in (False, True):
        body = {"model": "sim-model", "prompt": ["short", "word " * 200], "max_tokens": 3, "stream": stream}
        resp = await client.post(f"{gw.url}/v1/completions", json=body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"]
    await wait_until(lambda: all(e.outstanding == 0 for e in gw.gateway.pools[0].endpoints))
    await wait_until(lambda: d.stats.in_flight == 0 and p.stats.in_flight == 0)


async def test_a_client_leaving_a_streamed_list_cancels_every_part(sim, gateway):
    import httpx

    p = await sim(role="prefill")
    d = await sim(role="decode", itl_ms=50)
    gw = await gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": "nixl",
                "prefill": [p.url],
                "decode": [d.url],
            }
        ]
    )
    body = {"model": "sim-model", "prompt": PROMPTS, "max_tokens": 200, "stream": True}
    async with httpx.AsyncClient() as c:
        async with c.stream("POST", f"{gw.url}/v1/completions", json=body) as resp:
            async for _ in resp.aiter_bytes():
                break
    await wait_until(lambda: d.stats.cancelled == 3)
    assert d.stats.in_flight == 0
    assert all(e.outstanding == 0 for e in gw.gateway.pools[0].endpoints)


async def test_prompt_lists_off_are_refused_as_before(sim, gateway, client):
    _, d, _, gw = await _pd(sim, gateway, split_prompt_lists=False)
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", "prompt": PROMPTS})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "multiple_prompts"
    assert d.stats.requests_total == 0


async def test_langchain_batch_against_a_pd_model_returns_every_answer(sim, gateway, client):
    from langchain_openai import OpenAI

    p, d, colo, gw = await _pd(sim, gateway)
    llm = OpenAI(model="sim-model", base_url=f"{gw.url}/v1", api_key="none", max_tokens=6, temperature=0)
    answers = await asyncio.to_thread(llm.batch, PROMPTS)  # sends one request with the list of prompts
    want = (
        await client.post(
            f"{colo.url}/v1/completions",
            json={"model": "sim-model", "prompt": PROMPTS, "max_tokens": 6, "temperature": 0},
        )
    ).json()
    assert answers == [c["text"] for c in want["choices"]]
    generated = await asyncio.to_thread(llm.generate, PROMPTS[:2])
    assert [g[0].text for g in generated.generations] == answers[:2]
    assert d.stats.requests_total >= 5
