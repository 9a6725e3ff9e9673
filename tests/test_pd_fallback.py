"""Decode-local fallback: a PD pool whose prefills cannot take a request serves it on a decode
alone, as a plain request, instead of answering 503 while its decodes sit idle."""

from __future__ import annotations

import pytest

from tests.conftest import sse_payloads, stream_text, wait_until

PROMPT = "the decode local fallback test prompt about tornadoes"


def _pool(p: str, d: str, **extra: object) -> list[dict]:
    return [
        {
            "name": "pd",
            "kind": "pd",
            "disaggregate_min_tokens": 0,
            "protocol": "nixl",
            "prefill": [p],
            "decode": [d],
            **extra,
        }
    ]


def _local(gw, reason: str) -> float:
    return gw.gateway.telemetry.families.decode_local.labels("pd", reason)._value.get()


async def _dead_prefill(sim, gateway, **extra):
    p = await sim(role="prefill")
    d = await sim(role="decode")
    colo = await sim()
    gw = await gateway(_pool(p.url, d.url, **extra))
    await wait_until(lambda: gw.gateway.ready)
    await p.close()
    gw.gateway.pools[0].groups["prefill"][0].healthy = True  # died after its last health check
    return d, colo, gw


@pytest.mark.parametrize("stream", [False, True])
async def test_a_dead_prefill_falls_back_to_the_decode_with_the_colocated_answer(sim, gateway, client, stream):
    d, colo, gw = await _dead_prefill(sim, gateway)
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 7, "stream": stream}
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    want = await client.post(f"{colo.url}/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    if stream:
        assert stream_text(sse_payloads(resp.content)) == stream_text(sse_payloads(want.content))
    else:
        assert resp.json()["choices"][0]["text"] == want.json()["choices"][0]["text"]
    assert d.stats.local_prefill_tokens > 0 and d.stats.kv_received == 0  # a plain request, computed there
    assert _local(gw, "prefill_failed") == 1


async def test_no_healthy_prefill_serves_on_the_decode_and_the_pool_stays_ready(sim, gateway, client):
    d = await sim(role="decode")
    gw = await gateway(_pool("http://127.0.0.1:9", d.url, models=["sim-model"]))
    await wait_until(lambda: gw.gateway.ready)
    assert (await client.get(f"{gw.url}/ready")).status_code == 200
    chat = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    resp = await client.post(f"{gw.url}/v1/chat/completions", json=chat)
    assert resp.status_code == 200, resp.text
    assert _local(gw, "no_prefill") == 1
    metrics = (await client.get(f"{gw.url}/metrics")).text
    assert 'pd_gateway_pd_decode_local_total{pool="pd",reason="no_prefill"} 1.0' in metrics
    status = (await client.get(f"{gw.url}/dashboard/status")).json()
    assert status["pools"][0]["decode_local"] == {"no_prefill": 1}


async def test_full_prefills_fall_back_at_once(sim, gateway, client):
    p = await sim(role="prefill")
    d = await sim(role="decode")
    gw = await gateway(_pool(p.url, d.url), limits={"max_inflight_per_worker": 1, "queue_timeout_s": 30})
    await wait_until(lambda: gw.gateway.ready)
    gw.gateway.pools[0].groups["prefill"][0].outstanding = 1  # another request holds the only slot
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", "prompt": PROMPT})
    assert resp.status_code == 200, resp.text
    assert p.stats.requests_total == 0 and _local(gw, "prefill_full") == 1


async def test_a_prefill_refusing_the_request_is_the_clients_answer_not_a_fallback(sim, gateway, client):
    p = await sim(role="prefill", max_model_len=64)
    d = await sim(role="decode", max_model_len=64)
    gw = await gateway(_pool(p.url, d.url))
    await wait_until(lambda: gw.gateway.ready)
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", "prompt": "word " * 200})
    assert resp.status_code == 400
    assert d.stats.requests_total == 0 and sum(gw.gateway.telemetry.local.values()) == 0


async def test_fallback_off_answers_as_before(sim, gateway, client):
    d, _, gw = await _dead_prefill(sim, gateway, decode_local_fallback=False)
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 5, "stream": True}
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    assert resp.status_code in (502, 503)
    assert d.stats.requests_total == 0
    await wait_until(lambda: not gw.gateway.ready)  # the next health check takes the dead prefill out


async def test_a_prefill_back_gets_requests_disaggregated_again(sim, gateway, client):
    d = await sim(role="decode")
    p = await sim(role="prefill")
    gw = await gateway(_pool(p.url, d.url))
    pool = gw.gateway.pools[0]
    await wait_until(lambda: gw.gateway.ready)
    pool.groups["prefill"][0].draining = True
    body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 3}
    assert (await client.post(f"{gw.url}/v1/completions", json=body)).status_code == 200
    assert d.stats.kv_received == 0 and _local(gw, "no_prefill") == 1
    pool.groups["prefill"][0].draining = False
    assert (await client.post(f"{gw.url}/v1/completions", json=body)).status_code == 200
    assert d.stats.kv_received == 1 and p.stats.requests_total == 1
