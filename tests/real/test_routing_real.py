"""Cache-aware routing on real vLLM CPU: two replicas with prefix caching and KV-cache events.

The same multi-turn workload goes through the gateway once per policy, each time from
empty caches: the workers' own prefix-cache counters must show more hits under the
cache-aware policies than under least_outstanding, with the same greedy output. And the
precise policy's view of a worker's blocks follows that worker's events, stored then evicted.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.real.conftest import MODEL_DIR, MODEL_NAME, VllmServer, distinct_ports, start_servers, stop_servers

WORDS = (
    "the a small large red blue green old new good bad day night water fire stone tree river city "
    "house road king queen child man woman dog cat bird fish book door window hand eye light dark "
    "run walk see make take give find think tell come go"
).split()
KV_BYTES = "2M"  # 2048 tokens of this model's KV: 16 blocks of 128, so conversations compete for it


@pytest.fixture(scope="module")
def event_replicas(vllm_stack, vllm_logs: Path):
    """Two servers that publish KV-cache events (ZMQ, bound on their own port) and allow a cache reset."""
    ports = distinct_ports(4)
    servers = []
    for i in range(2):
        events = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{ports[2 + i]}",
            "topic": "kv",
        }
        server = VllmServer(
            f"events-{i}",
            ports[i],
            vllm_logs / f"events-{i}.log",
            extra_args=["--kv-events-config", json.dumps(events), "--kv-cache-memory-bytes", KV_BYTES],
            extra_env={"VLLM_SERVER_DEV_MODE": "1"},
        )
        server.events = f"tcp://127.0.0.1:{ports[2 + i]}"  # type: ignore[attr-defined]
        servers.append(server)
    start_servers(servers)
    yield servers
    stop_servers(servers)


def _precise(servers: list[VllmServer]) -> dict:
    return {
        "name": "precise_prefix",
        "tokenizer": str(MODEL_DIR),
        "topic": "kv",
        "events": {s.url: s.events for s in servers},
    }  # type: ignore[attr-defined]


def _conversations(n: int = 6, turns: int = 4, seed: int = 5) -> list[list[list[dict]]]:
    """Each conversation's message lists, turn by turn (replies synthesized: the same in every run)."""
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    out = []
    for c in range(n):
        messages = [{"role": "system", "content": f"story {c}: {say(40)}"}]
        turns_of_c = []
        for _ in range(turns):
            messages = [*messages, {"role": "user", "content": say(10)}]
            turns_of_c.append(messages)
            messages = [*messages, {"role": "assistant", "content": say(10)}]
        out.append(turns_of_c)
    return out


async def _cache_counters(client: httpx.AsyncClient, servers: list[VllmServer]) -> tuple[float, float]:
    hits = queries = 0.0
    for s in servers:
        for family in text_string_to_metric_families((await client.get(s.url + "/metrics")).text):
            for sample in family.samples:
                if sample.name == "vllm:prefix_cache_hits_total":
                    hits += sample.value
                elif sample.name == "vllm:prefix_cache_queries_total":
                    queries += sample.value
    return hits, queries


async def _run(gateway_url: str, servers: list[VllmServer]) -> tuple[float, list[str]]:
    """The workload from empty caches; the hit rate it got and every answer, in order."""
    async with httpx.AsyncClient(timeout=120) as client:
        for s in servers:
            (await client.post(s.url + "/reset_prefix_cache")).raise_for_status()
        hits0, queries0 = await _cache_counters(client, servers)
        answers: dict[tuple[int, int], str] = {}

        async def converse(c: int, turns: list[list[dict]]) -> None:
            for t, messages in enumerate(turns):
                body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 8, "temperature": 0}
                resp = await client.post(gateway_url + "/v1/chat/completions", json=body)
                resp.raise_for_status()
                answers[c, t] = resp.json()["choices"][0]["message"]["content"]

        await asyncio.gather(*(converse(c, turns) for c, turns in enumerate(_conversations())))
        hits1, queries1 = await _cache_counters(client, servers)
    return (hits1 - hits0) / (queries1 - queries0), [answers[k] for k in sorted(answers)]


async def _wait_subscribed(client: httpx.AsyncClient, policy, servers: list[VllmServer]) -> None:
    """ZMQ drops what is published before a subscriber's connection is up: poke each worker
    until its events arrive."""
    for s in servers:
        sub = policy.subscribers[s.url]
        for i in range(40):
            if sub.received:
                break
            rng = random.Random(i)
            words = " ".join(rng.choice(WORDS) for _ in range(130))  # 280-340 tokens: 2 full blocks
            body = {"model": MODEL_NAME, "prompt": f"warm up {i} {words}", "max_tokens": 1}
            (await client.post(s.url + "/v1/completions", json=body)).raise_for_status()
            await asyncio.sleep(0.1)
        assert sub.received, f"no KV events from {s.url}"


async def test_cache_aware_policies_raise_the_workers_prefix_hit_rate(real_gateway, event_replicas) -> None:
    urls = [s.url for s in event_replicas]
    results = {}
    for policy in ("least_outstanding", "prefix_aware", _precise(event_replicas)):
        gw = await real_gateway([{"name": "dp", "workers": urls, "policy": policy}])
        await wait_until(lambda gw=gw: gw.gateway.ready, timeout_s=30)
        chosen = gw.gateway.pools[0].policies["replica"]
        if chosen.name == "precise_prefix":
            async with httpx.AsyncClient(timeout=60) as client:
                await _wait_subscribed(client, chosen, event_replicas)
        results[chosen.name] = await _run(gw.url, event_replicas)
        if chosen.name == "precise_prefix":
            assert chosen.checked > 0 and chosen.mismatched == 0  # the gateway names blocks as the engine does
        await gw.close()
    rates = {name: rate for name, (rate, _) in results.items()}
    print(f"\nprefix-cache hit rate (hits/queries, tokens) by policy: {rates}")
    assert rates["prefix_aware"] > rates["least_outstanding"]
    assert rates["precise_prefix"] > rates["least_outstanding"]
    baseline = results["least_outstanding"][1]
    assert results["prefix_aware"][1] == baseline and results["precise_prefix"][1] == baseline


async def test_precise_view_follows_a_workers_stored_then_evicted_blocks(real_gateway, event_replicas) -> None:
    worker = event_replicas[0]
    gw = await real_gateway(
        [{"name": "dp", "workers": [s.url for s in event_replicas], "policy": _precise(event_replicas)}]
    )
    policy = gw.gateway.pools[0].policies["replica"]
    async with httpx.AsyncClient(timeout=120) as client:
        (await client.post(worker.url + "/reset_prefix_cache")).raise_for_status()
        await _wait_subscribed(client, policy, event_replicas)
        rng = random.Random(9)

        def prompt() -> dict:
            return {"model": MODEL_NAME, "prompt": " ".join(rng.choice(WORDS) for _ in range(130)), "max_tokens": 1}

        first = prompt()
        hashes = policy.hasher.external_chain(policy.tokenize("completions", first))
        assert len(hashes) >= 2
        held = lambda: policy.view.match(hashes, [worker.url])[0]  # noqa: E731
        assert held() == 0
        (await client.post(worker.url + "/v1/completions", json=first)).raise_for_status()
        await wait_until(lambda: held() == len(hashes), timeout_s=10)
        for _ in range(30):  # other prompts until the cache (16 blocks) evicts the first one's
            (await client.post(worker.url + "/v1/completions", json=prompt())).raise_for_status()
            await asyncio.sleep(0.05)
            if held() < len(hashes):
                break
        await wait_until(lambda: held() < len(hashes), timeout_s=10)
        assert policy.subscribers[worker.url].gaps == 0
        assert policy.view.blocks(worker.url) <= 16  # the view never holds more than the worker can
        assert policy.mismatched == 0
    await gw.close()
