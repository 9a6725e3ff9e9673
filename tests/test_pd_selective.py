"""Selective disaggregation: only prompts with more uncached tokens than the pool's threshold pay
for the prefill leg and a KV transfer; short ones, or ones the decode already holds, run there."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import wait_until

SHORT = "a short prompt of a few tokens"  # ~7 tokens by the gateway's estimate
LONG = "the long prompt goes on " * 40  # ~240 tokens


async def _pd(sim, gateway, threshold: int, **pool: object):
    p = await sim(role="prefill")
    d = await sim(role="decode")
    gw = await gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "protocol": "nixl",
                "prefill": [p.url],
                "decode": [d.url],
                "disaggregate_min_tokens": threshold,
                **pool,
            }
        ]
    )
    await wait_until(lambda: gw.gateway.ready)
    return p, d, gw


async def _send(client, gw, prompt: str, stream: bool = False) -> None:
    body = {"model": "sim-model", "prompt": prompt, "max_tokens": 4, "stream": stream}
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("stream", [False, True])
async def test_short_prompts_run_on_the_decode_and_long_ones_go_disaggregated(sim, gateway, client, stream):
    p, d, gw = await _pd(sim, gateway, threshold=64)
    await _send(client, gw, SHORT, stream)
    assert p.stats.requests_total == 0 and d.stats.kv_received == 0 and d.stats.local_prefill_tokens > 0
    assert gw.gateway.telemetry.local == {("pd", "short_prompt"): 1}
    await _send(client, gw, LONG, stream)
    assert p.stats.requests_total == 1 and d.stats.kv_received == 1


async def test_a_prompt_the_decode_holds_runs_there(sim, gateway, client):
    p, d, gw = await _pd(sim, gateway, threshold=64, decode_policy="prefix_aware")
    await _send(client, gw, LONG)
    assert p.stats.requests_total == 1
    await _send(client, gw, LONG + " and one more line")  # its decode holds all but a few tokens
    assert p.stats.requests_total == 1 and d.stats.requests_total == 2
    assert gw.gateway.telemetry.local == {("pd", "short_prompt"): 1}


async def test_threshold_zero_disaggregates_every_request_as_before(sim, gateway, client):
    p, d, gw = await _pd(sim, gateway, threshold=0)
    await _send(client, gw, SHORT)
    assert p.stats.requests_total == 1 and d.stats.kv_received == 1
    assert not gw.gateway.telemetry.local


def test_neuron_legacy_pools_refuse_a_threshold():
    pool = {
        "name": "pd",
        "kind": "pd",
        "protocol": "neuron-legacy",
        "prefill": ["http://p:1"],
        "decode": ["http://d:1"],
    }
    with pytest.raises(ConfigError, match="disaggregate_min_tokens"):
        parse_config({"pools": [{**pool, "disaggregate_min_tokens": 64}]})
