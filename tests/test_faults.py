"""The fault suite: each fault, the outcome a user should see, bounded in time."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import sse_payloads, wait_until
from tests.faulty import FaultyWorker

BODY = {"model": "sim-model", "prompt": "hello there", "max_tokens": 5}


async def test_one_of_two_replicas_killed_under_load_fails_no_unstarted_request(sim, gateway):
    a, b = await sim(itl_ms=10), await sim(itl_ms=10)
    # The survivor must not fail its health checks for being slow on a busy machine.
    tolerant = {"interval_s": 0.2, "timeout_s": 2, "healthy_threshold": 1, "unhealthy_threshold": 3}
    gw = await gateway([{"name": "dp", "workers": [a.url, b.url]}], health=tolerant)
    outcomes: list[str] = []

    async def one(c: httpx.AsyncClient) -> None:
        got_bytes = False
        try:
            async with c.stream("POST", f"{gw.url}/v1/completions", json={**BODY, "stream": True}) as resp:
                if resp.status_code != 200:
                    outcomes.append(f"status {resp.status_code}")
                    return
                body = b""
                async for part in resp.aiter_bytes():
                    got_bytes = True
                    body += part
            payloads = sse_payloads(body)
            failed = any(isinstance(p, dict) and "error" in p for p in payloads)
            outcomes.append(("started-then-failed" if got_bytes else "failed") if failed else "ok")
        except httpx.HTTPError as err:
            outcomes.append(f"client error {err!r}")

    async def load(c: httpx.AsyncClient) -> None:
        for _ in range(15):
            await one(c)

    async with httpx.AsyncClient(timeout=10) as c:
        clients = [asyncio.create_task(load(c)) for _ in range(8)]
        await wait_until(lambda: a.stats.in_flight > 0 and b.stats.in_flight > 0, timeout_s=10)
        await a.close()  # killed: connections reset, port closed
        await asyncio.gather(*clients)
    assert len(outcomes) == 120
    unstarted_failures = [o for o in outcomes if o not in ("ok", "started-then-failed")]
    assert unstarted_failures == []
    assert outcomes.count("ok") >= 110


async def test_silent_worker_times_out_within_the_bound(gateway, client):
    w = await FaultyWorker("silent").start()
    gw = await gateway([{"name": "dp", "workers": [w.url]}], timeouts={"first_byte_s": 0.5})
    start = time.monotonic()
    resp = await client.post(f"{gw.url}/v1/completions", json=BODY)
    assert resp.status_code == 504 and time.monotonic() - start < 1.5
    assert "no response within 0.5s" in resp.json()["error"]["message"]
    await w.close()


async def test_stream_whose_first_event_never_comes_gets_a_real_504(gateway, client):
    w = await FaultyWorker("headers-then-silent").start()
    gw = await gateway([{"name": "dp", "workers": [w.url]}], timeouts={"first_byte_s": 0.4})
    start = time.monotonic()
    resp = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": True})
    assert resp.status_code == 504 and time.monotonic() - start < 2
    assert "sent nothing for 0.4s" in resp.json()["error"]["message"]
    assert resp.headers["x-request-id"]
    await w.close()


async def test_stream_cut_before_its_first_event_is_replayed_on_another_replica(sim, gateway, client):
    dying = await FaultyWorker("headers-then-close").start()
    good = await sim()
    gw = await gateway([{"name": "dp", "workers": [dying.url, good.url]}])
    for _ in range(4):  # least-loaded with round-robin ties: the dying one is chosen first half the time
        resp = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": True})
        payloads = sse_payloads(resp.content)
        assert resp.status_code == 200 and payloads[-1] == "[DONE]"
        assert "".join(p["choices"][0]["text"] for p in payloads[:-1]) and "error" not in str(payloads)
    assert dying.api_requests >= 1
    assert [ep.outstanding for ep in gw.gateway.pools[0].endpoints] == [0, 0]  # nothing leaked
    await dying.close()


async def test_stream_cut_before_its_first_event_with_no_replica_left_is_a_502(gateway, client):
    dying = [await FaultyWorker("headers-then-close").start() for _ in range(2)]
    gw = await gateway([{"name": "dp", "workers": [w.url for w in dying]}])
    resp = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": True})
    assert resp.status_code == 502 and "broke off the stream" in resp.json()["error"]["message"]
    assert sum(w.api_requests for w in dying) == 2  # each tried once, then the client is told
    for w in dying:
        await w.close()


@pytest.mark.parametrize(("behaviour", "stream"), [("garbage-sse", True), ("garbage-json", False), ("close", False)])
async def test_garbage_from_a_worker_is_a_clean_error(gateway, client, behaviour, stream):
    w = await FaultyWorker(behaviour).start()
    gw = await gateway([{"name": "dp", "workers": [w.url]}], retries={"attempts": 0})
    resp = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": stream})
    if resp.status_code == 200:
        payloads = sse_payloads(resp.content)
        assert "not an SSE data event" in payloads[-2]["error"]["message"]
    else:
        assert resp.status_code == 502
        assert resp.json()["error"]["message"]
    await w.close()


async def test_prefill_killed_gives_clean_errors_then_recovers(sim, gateway, client):
    p = await sim(role="prefill")
    d = await sim(role="decode")
    pool = {
        "name": "pd",
        "kind": "pd",
        "disaggregate_min_tokens": 0,
        "protocol": "nixl",
        "prefill": [p.url],
        "decode": [d.url],
    }
    gw = await gateway([{**pool, "decode_local_fallback": False}])  # with it: tests/test_pd_fallback.py
    ok = await client.post(f"{gw.url}/v1/completions", json=BODY)
    assert ok.status_code == 200
    port = int(p.url.rsplit(":", 1)[1])
    await p.close()
    for _ in range(3):
        resp = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": True})
        assert resp.status_code in (502, 503) and resp.json()["error"]["message"]
    assert d.stats.in_flight == 0
    await sim(role="prefill", port=port)  # it comes back on the same address
    await wait_until(lambda: gw.gateway.ready, timeout_s=3)
    again = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": True})
    assert again.status_code == 200 and sse_payloads(again.content)[-1] == "[DONE]"


async def test_client_disconnect_cancels_upstream_within_100ms(sim, gateway):
    a = await sim(itl_ms=30)
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    async with httpx.AsyncClient() as c:
        async with c.stream("POST", f"{gw.url}/v1/completions", json={**BODY, "max_tokens": 500, "stream": True}) as r:
            async for _ in r.aiter_bytes():
                break
    elapsed = await wait_until(lambda: a.stats.cancelled == 1, step_s=0.002)
    assert elapsed < 0.1


async def test_consecutive_failures_eject_then_health_checks_restore(sim, gateway, client):
    good = await sim()
    bad = await FaultyWorker("garbage-json").start()
    gw = await gateway(
        [{"name": "dp", "workers": [good.url, bad.url]}],
        outlier={"consecutive_failures": 2, "base_ejection_s": 0.5, "max_ejection_percent": 50},
        retries={"attempts": 0},
    )
    bad_ep = gw.gateway.pools[0].endpoints[1]
    for _ in range(6):
        await client.post(f"{gw.url}/v1/completions", json=BODY)
    assert bad.api_requests == 2 and bad_ep.ejections == 1 and not bad_ep.healthy
    await wait_until(lambda: bad_ep.healthy, timeout_s=2)  # ejection over, next health check passes
    for _ in range(4):
        await client.post(f"{gw.url}/v1/completions", json=BODY)
    assert bad.api_requests == 4 and bad_ep.ejections == 2  # ejected again, for longer
    assert bad_ep.ejected_until - asyncio.get_running_loop().time() > 0.6
    await bad.close()


async def test_ejection_never_takes_more_than_the_max_share(gateway, client):
    workers = [await FaultyWorker("garbage-json").start() for _ in range(2)]
    gw = await gateway(
        [{"name": "dp", "workers": [w.url for w in workers]}],
        outlier={"consecutive_failures": 1, "max_ejection_percent": 50},
        retries={"attempts": 0},
    )
    for _ in range(6):
        assert (await client.post(f"{gw.url}/v1/completions", json=BODY)).status_code == 502
    assert sum(1 for e in gw.gateway.pools[0].endpoints if e.ejections) == 1
    for w in workers:
        await w.close()


async def test_over_the_limit_requests_queue_then_get_429(sim, gateway, client):
    a = await sim(itl_ms=100)
    gw = await gateway(
        [{"name": "dp", "workers": [a.url]}], limits={"max_inflight": 2, "queue": 1, "queue_timeout_s": 0.3}
    )
    slow = {**BODY, "max_tokens": 6}
    results = await asyncio.gather(*(client.post(f"{gw.url}/v1/completions", json=slow) for _ in range(4)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 429, 429]
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["retry-after"] and refused.json()["error"]["type"] == "rate_limit_error"
    assert gw.gateway.admission.inflight == 0


async def test_per_worker_limit_waits_for_capacity(sim, gateway, client):
    a = await sim(itl_ms=20)
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"max_inflight_per_worker": 1})
    results = await asyncio.gather(*(client.post(f"{gw.url}/v1/completions", json=BODY) for _ in range(3)))
    assert [r.status_code for r in results] == [200, 200, 200]
    assert a.stats.requests_total == 3


async def test_body_size_limit_is_413(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"max_body_bytes": 2048})
    resp = await client.post(f"{gw.url}/v1/completions", json={**BODY, "prompt": "x" * 5000})
    assert resp.status_code == 413 and "2048" in resp.json()["error"]["message"]
    too_many = await client.post(f"{gw.url}/v1/completions", json={**BODY, "max_tokens": 10**9})
    assert too_many.status_code == 400


async def test_api_keys_and_worker_key(sim, gateway, client, caplog):
    a = await sim()
    gw = await gateway(
        [{"name": "dp", "workers": [a.url], "api_key": "worker-secret"}],
        auth={"api_keys": ["client-secret"], "admin_keys": ["admin-secret"]},
    )
    url = f"{gw.url}/v1/completions"
    assert (await client.post(url, json=BODY)).status_code == 401
    wrong = await client.post(url, json=BODY, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    ok = await client.post(url, json=BODY, headers={"authorization": "Bearer client-secret"})
    assert ok.status_code == 200
    assert a.stats.last_request_headers.get("authorization") == "Bearer worker-secret"
    assert "client-secret" not in caplog.text
    admin = f"{gw.url}/admin/workers"
    assert (await client.get(admin, headers={"authorization": "Bearer client-secret"})).status_code == 401
    listed = await client.get(admin, headers={"authorization": "Bearer admin-secret"})
    assert listed.json()["workers"][0]["url"] == a.url
    drained = await client.post(f"{admin}/drain", json={"url": a.url}, headers={"authorization": "Bearer admin-secret"})
    assert drained.json()["draining"] is True
    assert (await client.post(url, json=BODY, headers={"authorization": "Bearer client-secret"})).status_code == 503
