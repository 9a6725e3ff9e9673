"""The simulator's prefix-cache model and its vLLM-named Prometheus metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from workers.sim import SimServer
from workers.sim.prefix_cache import PrefixCache, block_hashes

StartSim = Callable[..., Awaitable[SimServer]]


def words(n: int, tag: str = "w") -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


# -- the cache as a pure data structure ---------------------------------------


def test_block_hashes_are_a_chain_of_full_blocks() -> None:
    a = block_hashes(words(40), 16)
    assert len(a) == 2  # the trailing 8 tokens are a partial block: never cached
    b = block_hashes(words(16) + words(16, "x"), 16)
    assert a[0] == b[0] and a[1] != b[1]
    # Same second block after a different first block: a different hash (the chain).
    c = block_hashes(words(16, "y") + words(32)[16:], 16)
    assert c[1] != a[1]


def test_repeated_prefix_hits_all_but_the_last_token() -> None:
    cache = PrefixCache(capacity_blocks=100, block_size=16)
    first = cache.admit(words(40))
    assert (first.prompt_tokens, first.cached_tokens) == (40, 0)
    again = cache.admit(words(40) + ["tail"])
    assert again.cached_tokens == 32 and again.uncached_tokens == 9
    # A block-aligned prompt seen before: vLLM still computes the last token, so the
    # last block cannot hit.
    aligned = cache.admit(words(32))
    assert aligned.cached_tokens == 16
    assert (cache.stats.requests, cache.stats.queries, cache.stats.hits) == (3, 40 + 41 + 32, 48)


def test_lru_eviction_keeps_the_recently_used_prefix() -> None:
    cache = PrefixCache(capacity_blocks=4, block_size=2)
    cache.admit(words(5, "a"))  # 2 blocks
    cache.admit(words(5, "b"))  # 2 blocks: full
    assert cache.admit(words(5, "a")).cached_tokens == 4  # touches a's blocks
    cache.admit(words(5, "c"))  # evicts b's 2 blocks, the least recently used
    assert len(cache) == 4 and cache.stats.evictions == 2
    assert cache.admit(words(5, "a")).cached_tokens == 4
    assert cache.admit(words(5, "b")).cached_tokens == 0


def test_disabled_cache_never_hits_or_counts() -> None:
    cache = PrefixCache(capacity_blocks=10, block_size=2, enabled=False)
    cache.admit(words(9))
    assert cache.admit(words(9)).cached_tokens == 0
    assert cache.stats.queries == 0 and len(cache) == 0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        PrefixCache(block_size=0)
    with pytest.raises(ValueError):
        PrefixCache(capacity_blocks=-1)


# -- the server ------------------------------------------------------------------


def scrape(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels -> value}, through prometheus_client's own parser."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(metrics: dict[str, Any], name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted({"model_name": "sim-model", "engine": "0", **labels}.items()))]


async def completion(c: httpx.AsyncClient, s: SimServer, prompt: str, **extra: Any) -> dict[str, Any]:
    r = await c.post(s.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 2, **extra})
    assert r.status_code == 200, r.text
    return r.json()


async def test_repeated_prefix_is_charged_only_its_uncached_suffix(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim(prefill_ms_per_token=0.01, enable_prompt_tokens_details=True)
    system = " ".join(words(64, "sys"))
    first = await completion(client, s, system + " question one")
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert s.stats.local_prefill_tokens == 66
    second = await completion(client, s, system + " question two")
    # 66 tokens = 4 full blocks, all cached; only the 2-token tail is computed.
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 64}
    assert (s.stats.local_prefill_tokens, s.stats.local_cache_hit_tokens) == (66 + 2, 64)
    m = scrape((await client.get(s.url + "/metrics")).text)
    assert one(m, "vllm:prefix_cache_queries_total") == 132
    assert one(m, "vllm:prefix_cache_hits_total") == 64
    assert one(m, "vllm:prompt_tokens_by_source_total", source="local_cache_hit") == 64
    assert one(m, "vllm:prompt_tokens_by_source_total", source="local_compute") == 68


async def test_prompt_tokens_details_off_by_default_as_in_vllm(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim()
    body = await completion(client, s, "a b c")
    assert body["usage"]["prompt_tokens_details"] is None


async def test_eviction_makes_a_prefix_miss_again(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim(block_size=4, prefix_cache_blocks=2)
    a, b = " ".join(words(9, "a")), " ".join(words(9, "b"))
    await completion(client, s, a)
    await completion(client, s, b)  # evicts a's two blocks
    await completion(client, s, a)
    assert s.prefix_cache.stats.hits == 0 and s.prefix_cache.stats.evictions == 4
    await completion(client, s, a)
    assert s.prefix_cache.stats.hits == 8


async def test_no_prefix_caching_flag(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim(enable_prefix_caching=False)
    for _ in range(2):
        await completion(client, s, " ".join(words(40)))
    assert s.stats.local_prefill_tokens == 80 and s.stats.local_cache_hit_tokens == 0


async def test_chat_history_is_a_prefix_of_the_next_turn(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim(block_size=4)
    history = [{"role": "system", "content": " ".join(words(30))}, {"role": "user", "content": "first question"}]
    url = s.url + "/v1/chat/completions"
    reply = (await client.post(url, json={"messages": history, "max_tokens": 3})).json()
    history += [reply["choices"][0]["message"], {"role": "user", "content": "next"}]
    assert (await client.post(url, json={"messages": history, "max_tokens": 3})).status_code == 200
    assert s.prefix_cache.stats.hits >= 32


@pytest.mark.parametrize("outputs", [False, True])
async def test_generated_tokens_are_cached_with_the_flag(
    sim: StartSim, client: httpx.AsyncClient, outputs: bool
) -> None:
    # 5 prompt tokens, then `assistant:` and 12 generated: the next turn re-sends them all.
    s = await sim(block_size=4, prefix_cache_outputs=outputs)
    history = [{"role": "system", "content": "a b"}, {"role": "user", "content": "c"}]
    url = s.url + "/v1/chat/completions"
    reply = (await client.post(url, json={"messages": history, "max_tokens": 12})).json()
    history += [reply["choices"][0]["message"], {"role": "user", "content": "d e f g h"}]
    second = await client.post(url, json={"messages": history, "max_tokens": 1})
    assert second.json()["usage"]["prompt_tokens"] == 5 + 13 + 6
    # Without the flag only the first prompt's one full block is cached; with it, prompt + reply's 4.
    assert s.prefix_cache.stats.hits == (16 if outputs else 4)


async def test_metrics_have_vllm_names_types_and_labels(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim(model="m-7", itl_ms=50, prefix_cache_blocks=10, block_size=4)
    r = await client.get(s.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    expect = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter",
    }
    assert {name: families[name].type for name in expect} == expect
    for name in expect:
        assert {smp.labels["model_name"] for smp in families[name].samples} == {"m-7"}
    # The KV cache's size as vLLM 0.32 reports it: an info-style gauge of 1, no model_name label.
    (info,) = families["vllm:cache_config_info"].samples
    assert (info.value, info.labels["num_gpu_blocks"], info.labels["block_size"], info.labels["engine"]) == (
        1.0, "10", "4", "0")  # fmt: skip
    assert "model_name" not in info.labels


async def test_running_and_kv_usage_follow_a_live_stream(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim(itl_ms=20, block_size=4, prefix_cache_blocks=10)
    body = {"prompt": "a b c d e f", "max_tokens": 50, "stream": True}
    async with client.stream("POST", s.url + "/v1/completions", json=body) as r:
        await r.aiter_raw().__anext__()  # the first token: the request is running
        m = scrape((await client.get(s.url + "/metrics")).text)
        labels = {"model_name": "sim-model", "engine": "0"}
        key = tuple(sorted(labels.items()))
        assert m["vllm:num_requests_running"][key] == 1
        assert m["vllm:kv_cache_usage_perc"][key] == 1.0  # ceil(56 / 4) = 14 blocks > 10
        await r.aclose()
    await wait_until(lambda: s.stats.in_flight == 0)  # the server sees the disconnect
    m = scrape((await client.get(s.url + "/metrics")).text)
    assert m["vllm:kv_cache_usage_perc"][key] == 0.0
    assert m["vllm:num_requests_running"][key] == 0


async def test_sim_reset_clears_the_cache(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim()
    await completion(client, s, " ".join(words(40)))
    assert len(s.prefix_cache) == 2
    await client.post(s.url + "/sim/reset")
    assert len(s.prefix_cache) == 0 and s.prefix_cache.stats.queries == 0
