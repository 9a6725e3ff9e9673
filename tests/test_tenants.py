"""Tenants: API keys that belong to someone, their budgets (429 with Retry-After), and the
admission queue that serves higher classes first and shares a class by token work."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import ConfigError, parse_config
from gateway.errors import GatewayError
from gateway.tenants import TenantAdmission
from tests.conftest import FAST_HEALTH, wait_until

STREAM = {"model": "sim-model", "prompt": "hello", "max_tokens": 8, "stream": True}
POOL = "http://127.0.0.1:9"


def _admission(*tenants: dict, limit: int = 1, **limits: object) -> TenantAdmission:
    config = {
        "pools": [{"name": "p", "workers": [POOL]}],
        "limits": {"max_inflight": limit, **limits},
        "tenants": list(tenants),
    }
    return TenantAdmission(parse_config(config))


async def _served_in_order(adm: TenantAdmission, waiters: list[tuple[str, int]]) -> list[str]:
    """Fill the one slot, queue `waiters` (tenant, work) in this order, then free the slot
    once per waiter: the order they were admitted in."""
    order: list[str] = []
    await adm.enter()  # the default tenant holds the slot

    async def wait(name: str, work: int) -> None:
        await adm.enter(adm.states[name], work)
        order.append(name)

    tasks = []
    for i, (name, work) in enumerate(waiters):
        tasks.append(asyncio.create_task(wait(name, work)))
        await wait_until(lambda n=i + 1: adm.queued == n)
    holder = None
    for n in range(len(waiters)):
        adm.leave(holder)
        await wait_until(lambda n=n: len(order) == n + 1)
        holder = adm.states[order[-1]]
    await asyncio.gather(*tasks)
    return order


async def test_a_burst_of_one_tenant_does_not_starve_another_of_its_class():
    adm = _admission({"name": "a", "api_keys": ["ka"]}, {"name": "b", "api_keys": ["kb"]})
    order = await _served_in_order(adm, [("a", 100)] * 6 + [("b", 100)] * 2)
    assert order.index("b") <= 1 and order[:4].count("b") == 2  # FIFO would serve b 7th and 8th
    assert order == ["a", "b", "a", "b", "a", "a", "a", "a"]


async def test_a_class_is_shared_by_weight_and_by_token_work():
    adm = _admission({"name": "a", "api_keys": ["ka"]}, {"name": "b", "api_keys": ["kb"], "weight": 3})
    order = await _served_in_order(adm, [("a", 100)] * 4 + [("b", 100)] * 4)
    assert order[:4] == ["a", "b", "b", "b"]  # b weighs three times a: three of its requests per one of a's
    adm = _admission({"name": "a", "api_keys": ["ka"]}, {"name": "b", "api_keys": ["kb"]})
    order = await _served_in_order(adm, [("a", 400)] * 3 + [("b", 100)] * 4)
    assert order[:5] == ["a", "b", "b", "b", "b"]  # a's requests are four times b's work


async def test_a_higher_class_is_served_first():
    adm = _admission({"name": "batch", "api_keys": ["k1"]}, {"name": "online", "api_keys": ["k2"], "priority": 1})
    order = await _served_in_order(adm, [("batch", 1)] * 3 + [("online", 1000)] * 2)
    assert order == ["online", "online", "batch", "batch", "batch"]


async def test_a_waiter_that_times_out_leaves_the_queue_and_its_slot_is_not_lost():
    adm = _admission({"name": "a", "api_keys": ["ka"]}, queue_timeout_s=0.05)
    await adm.enter()
    with pytest.raises(GatewayError) as err:
        await adm.enter(adm.states["a"], 1)
    assert err.value.status == 429 and adm.queued == 0 and adm.states["a"].rejected["queue_timeout"] == 1
    adm.leave()
    assert adm.inflight == 0 and adm.states["a"].inflight == 0


def test_a_key_belongs_to_one_tenant():
    config = {"pools": [{"name": "p", "workers": [POOL]}], "auth": {"api_keys": ["k"]}}
    with pytest.raises(ConfigError, match="one tenant"):
        parse_config({**config, "tenants": [{"name": "a", "api_keys": ["k"]}]})
    with pytest.raises(ConfigError, match="tenants.0.requests_per_minute"):
        parse_config({**config, "tenants": [{"name": "a", "api_keys": ["x"], "requests_per_minute": 0}]})


async def _gateway(gateway, sim, *tenants: dict, **sections: object):
    w = await sim(itl_ms=20)
    pools = [{"name": "dp", "workers": [w.url]}]
    return w, await gateway(pools, health=FAST_HEALTH, tenants=list(tenants), **sections)


def _key(k: str) -> dict:
    return {"authorization": f"Bearer {k}"}


async def test_over_its_request_budget_a_tenant_gets_429_with_retry_after(sim, gateway, client):
    _, gw = await _gateway(
        gateway,
        sim,
        {"name": "flood", "api_keys": ["kf"], "requests_per_minute": 60, "burst_s": 2},
        {"name": "calm", "api_keys": ["kc"]},
        auth={"api_keys": ["plain"], "admin_keys": ["adm"], "metrics": "key"},
    )
    url = f"{gw.url}/v1/completions"
    body = {**STREAM, "stream": False}
    assert [(await client.post(url, json=body, headers=_key("kf"))).status_code for _ in range(2)] == [200, 200]
    r = await client.post(url, json=body, headers=_key("kf"))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 2
    error = r.json()["error"]
    assert (
        error["code"] == "rate_limit_exceeded"
        and "flood" in error["message"]
        and "60 requests per minute" in error["message"]
    )
    for key in ("kc", "plain"):
        assert (await client.post(url, json=body, headers=_key(key))).status_code == 200
    assert (await client.post(url, json=body, headers=_key("unknown"))).status_code == 401
    assert (await client.get(f"{gw.url}/v1/models", headers=_key("kc"))).status_code == 200
    assert (await client.get(f"{gw.url}/metrics")).status_code == 401
    metrics = (await client.get(f"{gw.url}/metrics", headers=_key("kc"))).text  # a tenant's key is an API key
    assert 'pd_gateway_tenant_rejected_total{reason="requests_per_minute",tenant="flood"} 1.0' in metrics
    assert 'pd_gateway_tenant_requests_total{tenant="flood"} 2.0' in metrics
    assert 'pd_gateway_tenant_requests_total{tenant="calm"} 1.0' in metrics
    assert "unknown" not in metrics
    status = (await client.get(f"{gw.url}/dashboard/status", headers=_key("adm"))).json()
    flood = next(t for t in status["tenants"] if t["name"] == "flood")
    assert flood["admitted"] == 2 and flood["rejected"] == 1 and flood["completion_tokens"] == 16


async def test_concurrency_and_token_budgets(sim, gateway, client):
    w, gw = await _gateway(
        gateway,
        sim,
        {"name": "one", "api_keys": ["k1"], "max_concurrent": 1},
        {"name": "tok", "api_keys": ["k2"], "tokens_per_minute": 60, "burst_s": 10},
    )
    url = f"{gw.url}/v1/completions"
    first = asyncio.create_task(client.post(url, json=STREAM, headers=_key("k1")))
    await wait_until(lambda: w.stats.in_flight == 1)
    r = await client.post(url, json=STREAM, headers=_key("k1"))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert (await first).status_code == 200
    assert (await client.post(url, json=STREAM, headers=_key("k1"))).status_code == 200
    # 10 tokens of budget at once; a request of 8 completion tokens and its prompt spends it
    body = {**STREAM, "stream": False, "max_tokens": 20}
    assert (await client.post(url, json=body, headers=_key("k2"))).status_code == 200
    r = await client.post(url, json=body, headers=_key("k2"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 10  # 20+ tokens over, at 1 token/s
    state = gw.gateway.tenants.states["tok"]
    assert state.completion_tokens == 20 and state.prompt_tokens > 0


async def test_tenants_change_on_reload(sim, gateway, client):
    _, gw = await _gateway(
        gateway,
        sim,
        {"name": "a", "api_keys": ["k1"], "requests_per_minute": 1, "burst_s": 1},
        auth={"admin_keys": ["adm"]},
    )
    url = f"{gw.url}/v1/completions"
    body = {**STREAM, "stream": False}
    assert (await client.post(url, json=body, headers=_key("k1"))).status_code == 200
    assert (await client.post(url, json=body, headers=_key("k1"))).status_code == 429
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "health": FAST_HEALTH,
        "auth": {"admin_keys": ["adm"]},
        "pools": [{"name": "dp", "workers": [gw.gateway.pools[0].endpoints[0].url]}],
        "tenants": [{"name": "a", "api_keys": ["k2"], "requests_per_minute": 600}],
    }
    r = await client.post(f"{gw.url}/admin/config/reload", json=config, headers=_key("adm"))
    assert r.status_code == 200, r.text
    assert (await client.post(url, json=body, headers=_key("k1"))).status_code == 401
    assert (await client.post(url, json=body, headers=_key("k2"))).status_code == 200  # a new budget
    assert gw.gateway.tenants.states["a"].admitted == 2  # the same tenant, its counts kept


async def test_one_tenants_requests_wait_in_order_and_a_cancelled_waiter_takes_no_slot():
    adm = _admission(queue=3)
    await adm.enter()
    second, third = asyncio.ensure_future(adm.enter(None, 50)), asyncio.ensure_future(adm.enter(None, 1))
    gone = asyncio.ensure_future(adm.enter())
    await wait_until(lambda: adm.queued == 3)
    with pytest.raises(GatewayError) as err:  # the queue is full
        await adm.enter()
    assert err.value.status == 429 and err.value.headers["retry-after"] == "1"
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert adm.queued == 2
    adm.leave()
    await second  # first come, first served within a tenant, whatever the work
    assert not third.done() and adm.inflight == 1  # the slot was handed over, not given back
    adm.leave()
    await third
    adm.leave()
    assert adm.inflight == 0 and adm.queued == 0 and adm.default.inflight == 0
