"""The gateway in front of data-parallel replicas: relaying, ids, errors, routing."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.conftest import sse_payloads, stream_text, wait_until


async def _two_replicas(sim, gateway, **sim_config):
    a, b = await sim(**sim_config), await sim(**sim_config)
    gw = await gateway([{"name": "dp", "workers": [a.url, b.url]}])
    return a, b, gw


async def test_stream_is_relayed_event_for_event(sim, gateway, client):
    a, b, gw = await _two_replicas(sim, gateway)
    body = {"model": "sim-model", "prompt": "the quick brown fox", "max_tokens": 8, "stream": True}
    headers = {"x-request-id": "same-id"}
    direct = (await client.post(f"{a.url}/v1/completions", json=body, headers=headers)).content
    via = await client.post(f"{gw.url}/v1/completions", json=body, headers=headers)
    assert via.status_code == 200
    assert via.headers["content-type"].startswith("text/event-stream")

    def strip_created(payloads):
        return [{k: v for k, v in p.items() if k != "created"} if isinstance(p, dict) else p for p in payloads]

    assert strip_created(sse_payloads(via.content)) == strip_created(sse_payloads(direct))


async def test_streaming_text_equals_non_streaming_text(sim, gateway, client):
    _, _, gw = await _two_replicas(sim, gateway)
    for route, extra in (
        ("completions", {"prompt": "a tornado is a"}),
        ("chat/completions", {"messages": [{"role": "user", "content": "hello"}]}),
    ):
        body = {"model": "sim-model", "max_tokens": 12, **extra}
        plain = (await client.post(f"{gw.url}/v1/{route}", json=body)).json()
        streamed = await client.post(f"{gw.url}/v1/{route}", json={**body, "stream": True})
        choice = plain["choices"][0]
        assert stream_text(sse_payloads(streamed.content)) == (choice.get("text") or choice["message"]["content"])


async def test_usage_chunk_only_when_asked(sim, gateway, client):
    _, _, gw = await _two_replicas(sim, gateway)
    body = {"model": "sim-model", "prompt": "x y z", "max_tokens": 4, "stream": True}
    plain = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=body)).content)
    assert not [p for p in plain if isinstance(p, dict) and p["choices"] == []]
    asked = {**body, "stream_options": {"include_usage": True}}
    with_usage = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=asked)).content)
    usage = [p for p in with_usage if isinstance(p, dict) and p["choices"] == []]
    assert len(usage) == 1 and usage[0]["usage"]["completion_tokens"] == 4


async def test_llmperf_style_parsing_accepts_every_line(sim, gateway, client):
    _, _, gw = await _two_replicas(sim, gateway)
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
    async with client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as resp:
        lines = [line async for line in resp.aiter_lines() if line.strip()]
    for line in lines:  # llmperf: strip 6 bytes ("data: "), JSON-parse the rest unless [DONE]
        rest = line[6:]
        if rest != "[DONE]":
            json.loads(rest)
    assert lines[-1] == "data: [DONE]"


async def test_unknown_fields_reach_the_worker_untouched(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    raw = b'{"model":"sim-model","prompt":"hi","max_tokens":2,"top_k":50,"ignore_eos":true,"vendor_x":{"k":[1,2]}}'
    resp = await client.post(f"{gw.url}/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200
    assert a.stats.last_request_body == json.loads(raw)


async def test_request_id_is_forwarded_and_returned(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}
    resp = await client.post(f"{gw.url}/v1/completions", json=body, headers={"x-request-id": "client-rid-1"})
    assert resp.headers["x-request-id"] == "client-rid-1"
    resp2 = await client.post(f"{gw.url}/v1/completions", json={**body, "stream": True})
    generated = resp2.headers["x-request-id"]
    assert len(generated) >= 16
    assert list(a.stats.request_ids)[-2:] == ["client-rid-1", generated]


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"prompt": "hi"}', 400, "'model'"),
        (b'{"model": "sim-model", "prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
        (b'{"model": "sim-model", "prompt": "hi", "stream": "yes"}', 400, "stream"),
        (b'{"model": "no-such-model", "prompt": "hi"}', 404, "no-such-model"),
    ],
)
async def test_bad_requests_get_openai_errors(sim, gateway, client, raw, status, needle):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    resp = await client.post(f"{gw.url}/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == status
    error = resp.json()["error"]
    assert needle in error["message"] and error["type"] and error["code"]
    assert resp.headers["x-request-id"]


async def test_worker_4xx_is_passed_through(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    body = {"model": "sim-model", "prompt": "hi", "temperature": -1}  # vLLM's (and the sim's) 400
    direct = await client.post(f"{a.url}/v1/completions", json=body)
    via = await client.post(f"{gw.url}/v1/completions", json=body)
    assert direct.status_code == via.status_code == 400
    assert via.content == direct.content


async def test_no_healthy_worker_is_503_with_retry_after(gateway, client):
    gw = await gateway([{"name": "dp", "models": ["m"], "workers": ["http://127.0.0.1:9"]}])
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": "m", "prompt": "hi"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"]
    assert resp.json()["error"]["code"] == "no_healthy_worker"
    assert (await client.get(f"{gw.url}/ready")).status_code == 503
    assert (await client.get(f"{gw.url}/health")).status_code == 200


async def test_models_is_the_union_of_workers_models(sim, gateway, client):
    a, b = await sim(model="alpha"), await sim(model="beta")
    gw = await gateway([{"name": "p1", "workers": [a.url]}, {"name": "p2", "workers": [b.url]}])
    ids = {m["id"] for m in (await client.get(f"{gw.url}/v1/models")).json()["data"]}
    assert ids == {"alpha", "beta"}
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": "beta", "prompt": "hi", "max_tokens": 1})
    assert resp.json()["model"] == "beta"
    assert (await client.get(f"{gw.url}/ready")).json()["ready"] is True


async def test_least_outstanding_then_round_robin(sim, gateway, client):
    a, b, gw = await _two_replicas(sim, gateway, itl_ms=20)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 1}
    for _ in range(4):
        await client.post(f"{gw.url}/v1/completions", json=body)
    assert a.stats.requests_total == b.stats.requests_total == 2
    long = {"model": "sim-model", "prompt": "hi", "max_tokens": 30, "stream": True}
    busy = asyncio.create_task(client.post(f"{gw.url}/v1/completions", json=long))
    await asyncio.sleep(0.1)
    busy_worker = a if a.stats.in_flight else b
    idle_worker = b if busy_worker is a else a
    before = idle_worker.stats.requests_total
    for _ in range(3):  # sequential short requests all avoid the busy worker
        await client.post(f"{gw.url}/v1/completions", json=body)
    assert idle_worker.stats.requests_total == before + 3
    await busy


async def test_worker_dying_mid_stream_ends_with_error_event(sim, gateway, client):
    a = await sim(fail_after_tokens=3)
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 10, "stream": True}
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    payloads = sse_payloads(resp.content)
    assert payloads[-1] == "[DONE]"
    assert "error" in payloads[-2]
    assert len([p for p in payloads if isinstance(p, dict) and p.get("choices")]) == 3


async def test_client_disconnect_cancels_the_worker_request(sim, gateway):
    a = await sim(itl_ms=50)
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 200, "stream": True}
    async with httpx.AsyncClient() as c:
        async with c.stream("POST", f"{gw.url}/v1/completions", json=body) as resp:
            async for _ in resp.aiter_bytes():
                break
    await wait_until(lambda: a.stats.cancelled > 0)
    assert a.stats.cancelled == 1
    assert gw.gateway.pools[0].endpoints[0].outstanding == 0


async def test_client_disconnect_before_first_token_cancels_too(sim, gateway):
    a = await sim(ttft_ms=2000)
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 5}
    async with httpx.AsyncClient(timeout=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(f"{gw.url}/v1/completions", json=body)
    await wait_until(lambda: a.stats.cancelled > 0)
    assert a.stats.cancelled == 1
    assert gw.gateway.pools[0].endpoints[0].outstanding == 0


async def test_first_byte_timeout_gives_a_clear_error(sim, gateway, client):
    a = await sim(ttft_ms=3000)
    gw = await gateway([{"name": "dp", "workers": [a.url]}], timeouts={"first_byte_s": 0.3})
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 5}
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    assert resp.status_code == 504
    assert "0.3s" in resp.json()["error"]["message"]
    streamed = await client.post(f"{gw.url}/v1/completions", json={**body, "stream": True})
    assert streamed.status_code == 504  # nothing was sent yet, so a real status


async def test_stall_between_chunks_ends_the_stream_with_an_error(sim, gateway, client):
    a = await sim(itl_ms=5000)
    gw = await gateway([{"name": "dp", "workers": [a.url]}], timeouts={"between_chunks_s": 0.3})
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 5, "stream": True}
    started = asyncio.get_running_loop().time()
    payloads = sse_payloads((await client.post(f"{gw.url}/v1/completions", json=body)).content)
    assert asyncio.get_running_loop().time() - started < 2
    assert payloads[0]["choices"][0]["text"]
    assert "sent nothing for 0.3s" in payloads[-2]["error"]["message"]
    await wait_until(lambda: a.stats.cancelled > 0)
    assert a.stats.cancelled == 1


async def test_connection_refused_retries_on_another_replica(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url, "http://127.0.0.1:9"]}])
    dead = gw.gateway.pools[0].endpoints[1]
    dead.healthy = True  # as if it died after its last health check
    for _ in range(4):
        body = {"model": "sim-model", "prompt": "hi", "max_tokens": 1}
        resp = await client.post(f"{gw.url}/v1/completions", json=body)
        assert resp.status_code == 200
    assert dead.healthy is False


async def test_openai_client_streams_chat_with_one_usage_chunk(sim, gateway):
    import openai

    _, _, gw = await _two_replicas(sim, gateway)
    oai = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    stream = await oai.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    await oai.close()


async def test_client_connections_have_nodelay(sim, gateway, client):
    """Without TCP_NODELAY a response's second write waits for a delayed ACK (40 ms)."""
    import socket

    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", "prompt": "hi", "max_tokens": 1})
    conns = list(gw.server.server_state.connections)
    assert conns
    for conn in conns:
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
