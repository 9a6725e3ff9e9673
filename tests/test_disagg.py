"""Prefill/decode pools behind the gateway, against simulated workers that implement
both KV-transfer protocols (nixl read mode, Neuron immediate-first-token)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import sse_payloads, stream_text, wait_until

PROMPT = "the disaggregated prefill decode router test prompt"
CHAT = [{"role": "user", "content": "tell me about tornadoes"}]


async def _pd(sim, gateway, protocol: str, fallback: bool = True, **sim_config):
    p = await sim(role="prefill", kv_protocol=protocol, **sim_config)
    d = await sim(role="decode", kv_protocol=protocol, kv_peers=[p.url], **sim_config)
    colo = await sim()
    pool = {
        "name": "pd",
        "kind": "pd",
        "disaggregate_min_tokens": 0,
        "protocol": protocol,
        "prefill": [p.url],
        "decode": [d.url],
    }
    gw = await gateway([{**pool, "decode_local_fallback": fallback}])
    return p, d, colo, gw


def _text(answer: dict) -> list[str]:
    return [c.get("text") if "text" in c else c["message"]["content"] for c in answer["choices"]]


ROUTES = [("completions", {"prompt": PROMPT}), ("chat/completions", {"messages": CHAT})]


@pytest.mark.parametrize("protocol", ["nixl", "neuron-legacy"])
@pytest.mark.parametrize(("route", "extra"), ROUTES)
async def test_disaggregated_output_equals_colocated(sim, gateway, client, protocol, route, extra):
    p, d, colo, gw = await _pd(sim, gateway, protocol)
    body = {"model": "sim-model", "max_tokens": 9, **extra}
    want = (await client.post(f"{colo.url}/v1/{route}", json=body)).json()
    got = await client.post(f"{gw.url}/v1/{route}", json=body)
    assert got.status_code == 200, got.text
    assert _text(got.json()) == _text(want)
    assert got.json()["usage"] == want["usage"]
    streamed = sse_payloads((await client.post(f"{gw.url}/v1/{route}", json={**body, "stream": True})).content)
    assert stream_text(streamed) == _text(want)[0]
    if route.startswith("chat"):
        roles = [c for s in streamed if isinstance(s, dict) for c in s["choices"] if "role" in c["delta"]]
        assert len(roles) == 1
    finishes = [c["finish_reason"] for s in streamed if isinstance(s, dict) for c in s["choices"] if c["finish_reason"]]
    assert finishes == ["length"]


async def test_nixl_legs_get_the_protocol_fields(sim, gateway, client):
    p, d, _, gw = await _pd(sim, gateway, "nixl")
    body = {
        "model": "sim-model",
        "prompt": PROMPT,
        "max_tokens": 5,
        "min_tokens": 2,
        "top_k": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    await client.post(f"{gw.url}/v1/completions", json=body, headers={"x-request-id": "rid-nixl"})
    p_body = p.stats.last_request_body
    assert p_body["stream"] is False and p_body["max_tokens"] == 1
    assert "stream_options" not in p_body and "min_tokens" not in p_body
    assert p_body["kv_transfer_params"] == {"do_remote_decode": True} and p_body["top_k"] == 7
    d_body = d.stats.last_request_body
    assert d_body["kv_transfer_params"]["do_remote_prefill"] is True
    assert {k: v for k, v in d_body.items() if k != "kv_transfer_params"} == body
    assert p.stats.request_ids[-1] == d.stats.request_ids[-1] == "rid-nixl"
    # the KV really moved: the decode computed none of the prompt itself
    assert d.stats.local_prefill_tokens == 0 and d.stats.external_prefill_tokens > 0


async def test_legacy_stream_has_one_usage_chunk_counted_once(sim, gateway, client):
    p, d, colo, gw = await _pd(sim, gateway, "neuron-legacy")
    body = {
        "model": "sim-model",
        "messages": CHAT,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    want = sse_payloads((await client.post(f"{colo.url}/v1/chat/completions", json=body)).content)
    got = sse_payloads((await client.post(f"{gw.url}/v1/chat/completions", json=body)).content)
    usage = [s["usage"] for s in got if isinstance(s, dict) and s["choices"] == []]
    assert usage == [s["usage"] for s in want if isinstance(s, dict) and s["choices"] == []]
    assert len(usage) == 1
    assert stream_text(got) == stream_text(want)
    assert p.stats.last_request_body["max_tokens"] == 1
    assert d.stats.last_request_body["max_tokens"] == 6


async def test_legacy_caps_max_completion_tokens_on_prefill(sim, gateway, client):
    p, d, colo, gw = await _pd(sim, gateway, "neuron-legacy")
    body = {"model": "sim-model", "messages": CHAT, "max_completion_tokens": 4}
    got = (await client.post(f"{gw.url}/v1/chat/completions", json=body)).json()
    assert p.stats.last_request_body["max_completion_tokens"] == 1
    assert _text(got) == _text((await client.post(f"{colo.url}/v1/chat/completions", json=body)).json())


@pytest.mark.parametrize("protocol", ["nixl", "neuron-legacy"])
async def test_n_greater_than_one_keeps_every_index(sim, gateway, client, protocol):
    p, d, colo, gw = await _pd(sim, gateway, protocol)
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 5, "n": 2, "stream": True}
    want = sse_payloads((await client.post(f"{colo.url}/v1/completions", json=body)).content)
    got = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=body)).content)

    def by_index(payloads):
        out: dict[int, str] = {}
        for s in payloads:
            for c in s["choices"] if isinstance(s, dict) else []:
                out[c["index"]] = out.get(c["index"], "") + c["text"]
        return out

    assert by_index(got) == by_index(want) and len(by_index(got)) == 2


@pytest.mark.parametrize("protocol", ["nixl", "neuron-legacy"])
async def test_prefill_down_gives_a_clear_error_and_no_decode_left_waiting(sim, gateway, client, protocol):
    p, d, _, gw = await _pd(sim, gateway, protocol, fallback=False)
    await p.close()
    gw.gateway.pools[0].groups["prefill"][0].healthy = True  # died after its last health check
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 5, "stream": True}
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    assert resp.status_code in (502, 503)
    assert resp.json()["error"]["message"]
    await asyncio.sleep(0.05)
    assert d.stats.in_flight == 0
    assert all(e.outstanding == 0 for e in gw.gateway.pools[0].endpoints)
    await wait_until(lambda: not gw.gateway.ready)  # the next health check takes the dead prefill out
    assert (await client.get(f"{gw.url}/ready")).status_code == 503


async def test_ready_needs_both_roles(sim, gateway, client):
    p = await sim(role="prefill")
    gw = await gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": "nixl",
                "models": ["sim-model"],
                "prefill": [p.url],
                "decode": ["http://127.0.0.1:9"],
            }
        ]
    )
    assert (await client.get(f"{gw.url}/ready")).json() == {"ready": False, "pools": {"pd": False}}
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", "prompt": "x"})
    assert resp.status_code == 503


@pytest.mark.parametrize("protocol", ["nixl", "neuron-legacy"])
async def test_client_disconnect_cancels_both_legs(sim, gateway, protocol):
    p, d, _, gw = await _pd(sim, gateway, protocol, itl_ms=50)
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 200, "stream": True}
    async with httpx.AsyncClient() as c:
        async with c.stream("POST", f"{gw.url}/v1/completions", json=body) as resp:
            async for _ in resp.aiter_bytes():
                break
    await wait_until(lambda: d.stats.cancelled > 0)
    assert d.stats.cancelled == 1
    assert d.stats.in_flight == 0 and p.stats.in_flight == 0
    assert all(e.outstanding == 0 for e in gw.gateway.pools[0].endpoints)


async def test_client_disconnect_during_prefill_cancels_prefill(sim, gateway):
    p = await sim(role="prefill", ttft_ms=2000)
    d = await sim(role="decode", kv_peers=[p.url])
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
    async with httpx.AsyncClient(timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(f"{gw.url}/v1/completions", json={"model": "sim-model", "prompt": PROMPT, "stream": True})
    await wait_until(lambda: p.stats.cancelled > 0)
    assert p.stats.cancelled == 1 and d.stats.requests_total == 0


async def test_xpyd_spreads_prefill_by_prompt_tokens_and_decode_by_requests(sim, gateway, client):
    ps = [await sim(role="prefill") for _ in range(2)]
    ds = [await sim(role="decode") for _ in range(3)]
    gw = await gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": "nixl",
                "prefill": [p.url for p in ps],
                "decode": [d.url for d in ds],
            }
        ]
    )
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 3}
    for _ in range(6):
        assert (await client.post(f"{gw.url}/v1/completions", json=body)).status_code == 200
    assert [p.stats.requests_total for p in ps] == [3, 3]
    assert [d.stats.requests_total for d in ds] == [2, 2, 2]
