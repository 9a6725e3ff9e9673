"""Workers' own load reports (/metrics) folded into the gateway's load score."""

from __future__ import annotations

import httpx

from gateway.pool import Endpoint
from gateway.worker_metrics import fold, parse_report
from tests.conftest import wait_until

PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
"""


def test_report_sums_engines_and_keeps_the_fullest_cache() -> None:
    report = parse_report(PAGE)
    assert report is not None
    assert (report.running, report.waiting, report.kv_usage) == (5, 4, 0.5)
    assert parse_report("# TYPE other gauge\nother 1.0\n") is None


def test_fold_counts_only_what_is_not_this_gateways() -> None:
    ep = Endpoint("http://w", "replica", "p")
    fold(ep, parse_report(PAGE), own=6)
    assert (ep.foreign, ep.kv_usage) == (3, 0.5)
    fold(ep, parse_report(PAGE), own=20)
    assert ep.foreign == 0
    fold(ep, None, own=0)
    assert (ep.foreign, ep.kv_usage) == (0, 0.0)


async def test_another_clients_requests_raise_the_load_the_gateway_sees(sim, gateway) -> None:
    """A stream sent to the worker around the gateway (as another gateway replica would)
    shows up as foreign load, and least_outstanding then prefers the other worker."""
    busy, idle = await sim(itl_ms=50.0), await sim()
    gw = await gateway(
        [{"name": "p", "workers": [busy.url, idle.url]}], worker_metrics={"interval_s": 0.05, "timeout_s": 1.0}
    )
    router = gw.gateway
    ep_busy, ep_idle = router.pools[0].endpoints
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 200, "stream": True}
    async with httpx.AsyncClient(timeout=30) as c:
        async with c.stream("POST", busy.url + "/v1/completions", json=body) as resp:
            chunks = resp.aiter_bytes()  # held: a dropped iterator closes the stream
            await anext(chunks)
            await wait_until(lambda: ep_busy.foreign == 1)
            await wait_until(lambda: ep_idle.healthy)
            assert ep_idle.foreign == 0
            policy = router.pools[0].policies["replica"]
            choices = {policy.choose(_Plain(), [ep_busy, ep_idle]).url for _ in range(4)}
            assert choices == {idle.url}


class _Plain:
    model, route, prompt_tokens, session_key, prefix_text = "sim-model", "completions", 1, None, "hi"
