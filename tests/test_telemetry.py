"""/metrics after known traffic: outcomes, tokens, latency histograms, failures by kind, gauges;
and the access log's lines."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import sse_payloads, wait_until
from tests.faulty import FaultyWorker

STREAM = {"prompt": "hi", "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}


class Scrape:
    """One /metrics exposition, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


async def scrape(client: httpx.AsyncClient, gw) -> Scrape:
    resp = await client.get(f"{gw.url}/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return Scrape(resp.text)


async def settled(gw, requests: int) -> None:
    """Wait until `requests` requests have finished their accounting (a stream's comes after its last byte)."""
    await wait_until(lambda: sum(gw.gateway.telemetry.outcomes.values()) >= requests)


async def test_metrics_after_successes_a_broken_stream_and_a_refusal(sim, gateway, client):
    good = await sim(model="sim-model", itl_ms=5)
    bad = await sim(model="bad-model", fail_after_tokens=3)
    gw = await gateway([{"name": "good", "workers": [good.url]}, {"name": "bad", "workers": [bad.url]}])
    for _ in range(3):
        sse_payloads((await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", **STREAM})).content)
    plain = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", "prompt": "hi", "max_tokens": 4})
    assert plain.status_code == 200
    broken = await client.post(f"{gw.url}/v1/completions", json={"model": "bad-model", **STREAM})
    broken = sse_payloads(broken.content)
    assert "error" in broken[-2]  # the stream ended with an error event after a 200
    assert (await client.post(f"{gw.url}/v1/completions", json={"model": "nope", "prompt": "x"})).status_code == 404
    await settled(gw, 6)
    m = await scrape(client, gw)

    assert "# HELP pd_gateway_ttft_seconds" in m.text and "# TYPE pd_gateway_ttft_seconds histogram" in m.text
    good_pool = {"pool": "good", "model": "sim-model", "route": "completions"}
    assert m.value("pd_gateway_requests_total", **good_pool, outcome="success", status="200") == 4
    assert m.value("pd_gateway_requests_total", pool="bad", outcome="stream_error", status="200") == 1
    assert m.value("pd_gateway_requests_total", pool="bad", outcome="success") == 0
    assert m.value("pd_gateway_requests_total", status="404", outcome="client_error", model="", pool="") == 1
    assert 'model="nope"' not in m.text  # a client's model name becomes a label only once routed
    assert m.value("pd_gateway_upstream_failures_total", endpoint=bad.url, kind="broken_stream") == 1
    # usage: 3 streams with include_usage + 1 plain answer, 5 + 4 completion tokens
    assert m.value("pd_gateway_completion_tokens_total", pool="good") == 3 * 5 + 4
    assert m.value("pd_gateway_prompt_tokens_total", pool="good") > 0
    assert m.value("pd_gateway_ttft_seconds_count", **good_pool) == 3  # streams only
    assert m.value("pd_gateway_e2e_seconds_count", **good_pool) == 4
    assert m.value("pd_gateway_itl_seconds_count", **good_pool) == 3
    ttft, e2e = m.value("pd_gateway_ttft_seconds_sum", **good_pool), m.value("pd_gateway_e2e_seconds_sum", **good_pool)
    assert 0 < ttft < e2e
    mean_itl = m.value("pd_gateway_itl_seconds_sum", **good_pool) / 3
    assert 0.004 < mean_itl < 1.0  # the sim waits 5 ms between tokens
    assert m.value("pd_gateway_ttft_seconds_count", pool="bad") == 0  # only successes feed the latencies
    assert m.value("pd_gateway_queue_seconds_count") == 6  # every request was admitted (the 404 too)
    assert m.value("pd_gateway_endpoint_healthy", endpoint=good.url, role="replica") == 1
    assert m.value("pd_gateway_endpoint_outstanding_requests", endpoint=good.url) == 0
    assert m.value("pd_gateway_inflight_requests") == 0 and m.value("pd_gateway_queued_requests") == 0


async def test_retries_connect_failures_and_ejections_are_counted(sim, gateway, client):
    a = await sim()
    # No health check after the first: only the failed request may find the dead worker out.
    gw = await gateway([{"name": "dp", "workers": [a.url, "http://127.0.0.1:9"]}], health={"interval_s": 3600})
    dead = gw.gateway.pools[0].endpoints[1]
    dead.healthy = True  # as if it died after its last health check
    for _ in range(4):
        body = {"model": "sim-model", "prompt": "hi", "max_tokens": 1}
        resp = await client.post(f"{gw.url}/v1/completions", json=body)
        assert resp.status_code == 200
    await settled(gw, 4)
    m = await scrape(client, gw)
    assert m.value("pd_gateway_retries_total", pool="dp", role="replica") == 1
    assert m.value("pd_gateway_upstream_failures_total", endpoint=dead.url, kind="connect") == 1
    assert m.value("pd_gateway_ejections_total", endpoint=dead.url) == 1
    assert m.value("pd_gateway_endpoint_ejected", endpoint=dead.url) == 1
    assert m.value("pd_gateway_endpoint_healthy", endpoint=dead.url) == 0
    assert m.value("pd_gateway_requests_total", outcome="success") == 4


async def test_a_stream_replayed_on_another_replica_is_counted(sim, gateway, client):
    dying = await FaultyWorker("headers-then-close").start()
    good = await sim()
    gw = await gateway([{"name": "dp", "workers": [dying.url, good.url]}])
    for _ in range(4):
        resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", **STREAM})
        assert resp.status_code == 200
    await settled(gw, 4)
    m = await scrape(client, gw)
    assert dying.api_requests >= 1
    assert m.value("pd_gateway_replays_total", pool="dp") == dying.api_requests
    assert m.value("pd_gateway_upstream_failures_total", endpoint=dying.url, kind="broken_stream") == dying.api_requests
    assert m.value("pd_gateway_requests_total", outcome="success") == 4
    await dying.close()


@pytest.mark.parametrize("protocol", ["nixl", "neuron-legacy"])
async def test_pd_requests_observe_the_prefill_leg_and_the_handoff(sim, gateway, client, protocol):
    p = await sim(role="prefill", kv_protocol=protocol, ttft_ms=30)
    d = await sim(role="decode", kv_protocol=protocol, kv_peers=[p.url], itl_ms=2)
    gw = await gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": protocol,
                "prefill": [p.url],
                "decode": [d.url],
            }
        ]
    )
    for _ in range(2):
        resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", **STREAM})
        assert sse_payloads(resp.content)[-1] == "[DONE]"
    await settled(gw, 2)
    m = await scrape(client, gw)
    assert m.value("pd_gateway_pd_prefill_seconds_count", pool="pd", endpoint=p.url) == 2
    assert m.value("pd_gateway_pd_prefill_seconds_sum", endpoint=p.url) >= 2 * 0.03  # the sim's 30 ms prefill
    assert m.value("pd_gateway_pd_handoff_seconds_count", pool="pd", endpoint=d.url) == 2
    handoff = m.value("pd_gateway_pd_handoff_seconds_sum", endpoint=d.url)
    assert 0 <= handoff < m.value("pd_gateway_e2e_seconds_sum", pool="pd")
    assert m.value("pd_gateway_ttft_seconds_count", pool="pd") == 2
    assert m.value("pd_gateway_requests_total", pool="pd", outcome="success") == 2
    status = (await client.get(f"{gw.url}/dashboard/status")).json()
    recent = {e["role"]: e["recent_count"] for e in status["pools"][0]["endpoints"]}
    assert recent == {"prefill": 2, "decode": 2}


async def test_client_disconnect_mid_stream_is_its_own_outcome(sim, gateway, client):
    a = await sim(itl_ms=50)
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 200, "stream": True}
    async with httpx.AsyncClient() as c:
        async with c.stream("POST", f"{gw.url}/v1/completions", json=body) as resp:
            async for _ in resp.aiter_bytes():
                break
    await settled(gw, 1)
    m = await scrape(client, gw)
    assert m.value("pd_gateway_client_disconnects_total", phase="streaming") == 1
    assert m.value("pd_gateway_requests_total", outcome="client_disconnect") == 1
    assert m.value("pd_gateway_upstream_failures_total") == 0  # the client going away is not the worker's fault


async def test_stream_failing_before_its_first_event_is_an_upstream_error(gateway, client):
    dying = await FaultyWorker("headers-then-close").start()
    gw = await gateway([{"name": "dp", "workers": [dying.url]}], retries={"attempts": 0})
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", **STREAM})
    assert resp.status_code == 502
    await settled(gw, 1)
    m = await scrape(client, gw)
    assert m.value("pd_gateway_requests_total", status="502", outcome="upstream_error") == 1
    await dying.close()


async def test_per_request_telemetry_can_be_turned_off(sim, gateway, client):
    a = await sim()
    gw = await gateway(
        [{"name": "dp", "workers": [a.url]}], observability={"request_metrics": False, "access_log": False}
    )
    assert (await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", **STREAM})).status_code == 200
    m = await scrape(client, gw)
    assert m.value("pd_gateway_requests_total") == 0 and m.value("pd_gateway_e2e_seconds_count") == 0
    assert m.value("pd_gateway_endpoint_healthy", endpoint=a.url) == 1  # the gauges stay


def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pd_gateway.access"]


async def test_access_log_text_line_escapes_client_values(sim, gateway, client, caplog):
    caplog.set_level(logging.INFO, logger="pd_gateway.access")
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", **STREAM})
    assert resp.status_code == 200
    await settled(gw, 1)
    [line] = _access_lines(caplog)
    rid = resp.headers["x-request-id"]
    assert line.startswith(f"request_id={rid} route=completions model=sim-model pool=dp")
    assert f"replica={a.url} status=200 outcome=success stream=true" in line
    assert "completion_tokens=5" in line and " ttft_ms=" in line and " total_ms=" in line
    evil = 'evil" status=500 x=\\'
    await client.post(f"{gw.url}/v1/completions", json={"model": evil, "prompt": "x"})
    await settled(gw, 2)
    refused = _access_lines(caplog)[1]
    assert "model=" + json.dumps(evil) in refused and "status=404 outcome=client_error" in refused
    assert refused.count("status=") == 2  # the forged one stays inside the quoted model name
    assert "pool=" not in refused


async def test_access_log_json_line(sim, gateway, client, caplog):
    caplog.set_level(logging.INFO, logger="pd_gateway.access")
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl")
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
        ],
        log_format="json",
    )
    resp = await client.post(
        f"{gw.url}/v1/completions", json={"model": "sim-model", **STREAM}, headers={"x-request-id": "trace-7"}
    )
    assert resp.status_code == 200
    await settled(gw, 1)
    [line] = _access_lines(caplog)
    entry = json.loads(line)
    assert entry["request_id"] == "trace-7" and entry["model"] == "sim-model"
    assert (entry["pool"], entry["prefill"], entry["decode"], entry["replica"]) == ("pd", p.url, d.url, None)
    assert entry["status"] == 200 and entry["outcome"] == "success" and entry["completion_tokens"] == 5
    assert 0 < entry["ttft_ms"] <= entry["total_ms"]
