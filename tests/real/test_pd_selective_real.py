"""Selective disaggregation on real vLLM CPU (1P1D NixlConnector plus a colocated server, the tiny
model with --max-model-len 2048). The test: short prompts through the PD pool never reach the
prefill (the decode serves them alone), long ones still go disaggregated (the decode's KV for
them arrives over NIXL).

The measurement behind `disaggregate_min_tokens`' default (TTFT p50 by prompt length: colocated,
decode direct, PD always, PD selective) is a benchmark, not a test: it runs only when asked, on a
quiet machine, and prints its table (`PD_MEASURE=1 pytest tests/real/test_pd_selective_real.py -s`).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time

import httpx
import pytest

from gateway.config import PoolConfig
from tests.real.conftest import VllmServer, _nixl_config, distinct_ports, start_servers, stop_servers
from tests.real.test_pd_real import EXTERNAL, LOCAL, _prompt_tokens_by_source

MODEL = "tiny"
LENGTHS = (32, 128, 256, 512, 1000)  # prompt tokens
ROUNDS = 16  # sequential requests per length and path
WORDS = "the old man watches long road night river follows small bird robot paints blue door children sing".split()


@pytest.fixture(scope="module")
def servers(vllm_nixl, vllm_stack, vllm_logs):
    ports = distinct_ports(5)
    long = ["--max-model-len", "2048"]
    made = [
        VllmServer(
            name,
            ports[i],
            vllm_logs / f"sel-{name}.log",
            extra_args=[*long, "--kv-transfer-config", _nixl_config(role)],
            extra_env={"VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1", "VLLM_NIXL_SIDE_CHANNEL_PORT": str(ports[3 + i])},
        )
        for i, (name, role) in enumerate((("prefill", "kv_producer"), ("decode", "kv_consumer")))
    ]
    made.append(VllmServer("colocated", ports[2], vllm_logs / "sel-colocated.log", extra_args=long))
    start_servers(made)
    yield made
    stop_servers(made)


async def _prompt(c: httpx.AsyncClient, url: str, tokens: int, rng: random.Random) -> str:
    """A prompt of about `tokens` tokens (by the server's tokenizer), unique from its first word
    on (no prefix cache hit anywhere)."""
    words = [f"n{rng.randrange(10**9)}"] + [rng.choice(WORDS) for _ in range(tokens * 2)]
    ids = (await c.post(f"{url}/tokenize", json={"model": MODEL, "prompt": " ".join(words)})).json()["tokens"]
    return (await c.post(f"{url}/detokenize", json={"model": MODEL, "tokens": ids[1:tokens]})).json()["prompt"]


async def _ttft(c: httpx.AsyncClient, url: str, prompt: str) -> float:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True}
    t0 = time.monotonic()
    first = None
    async with c.stream("POST", f"{url}/v1/completions", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.monotonic() - t0
    assert first is not None
    return first


async def _p50(c: httpx.AsyncClient, urls: dict[str, str], tokens: int, rng: random.Random) -> dict[str, float]:
    """TTFT p50 per path, the paths taking turns so that all see the same machine."""
    times: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(ROUNDS):
        for name, url in urls.items():
            prompt = await _prompt(c, urls["colocated"], tokens, rng)
            times[name].append(await _ttft(c, url, prompt))
    return {name: statistics.median(t) for name, t in times.items()}


async def _moved_over_nixl(c: httpx.AsyncClient, gateway_url: str, decode_url: str, prompt: str) -> tuple[float, int]:
    """(tokens the decode got over NIXL, computed itself) for one request, and its prompt tokens."""
    before = await _prompt_tokens_by_source(decode_url)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    answer = (await c.post(f"{gateway_url}/v1/completions", json=body)).json()
    after = before
    for _ in range(50):  # metrics reach the API process a moment after the response
        after = await _prompt_tokens_by_source(decode_url)
        if sum(after.values()) > sum(before.values()):
            break
        await asyncio.sleep(0.1)
    moved = after.get(EXTERNAL, 0) - before.get(EXTERNAL, 0)
    computed = after.get(LOCAL, 0) - before.get(LOCAL, 0)
    assert moved + computed == answer["usage"]["prompt_tokens"]
    return moved, answer["usage"]["prompt_tokens"]


def _pools(prefill: VllmServer, decode: VllmServer) -> tuple[dict, dict]:
    pd = {"name": "pd", "kind": "pd", "protocol": "nixl", "prefill": [prefill.url], "decode": [decode.url]}
    return {**pd, "disaggregate_min_tokens": 0}, {**pd, "name": "sel"}


async def test_short_prompts_stay_on_the_decode_and_long_ones_go_disaggregated(servers, real_gateway):
    prefill, decode, colocated = servers
    selective = await real_gateway([_pools(prefill, decode)[1]])
    rng = random.Random(1)
    async with httpx.AsyncClient(timeout=120) as c:
        for _ in range(4):
            await _ttft(c, selective.url, await _prompt(c, colocated.url, 32, rng))
        moved, prompt_tokens = await _moved_over_nixl(
            c, selective.url, decode.url, await _prompt(c, colocated.url, 1000, rng)
        )
    assert selective.gateway.telemetry.local.get(("sel", "short_prompt"), 0) == 4
    assert moved == prompt_tokens  # the long one: every prompt token's KV came from the prefill


@pytest.mark.skipif(not os.environ.get("PD_MEASURE"), reason="a measurement: PD_MEASURE=1 on a quiet machine")
async def test_measure_ttft_by_prompt_length(servers, real_gateway):
    prefill, decode, colocated = servers
    always_pool, selective_pool = _pools(prefill, decode)
    always, selective = await real_gateway([always_pool]), await real_gateway([selective_pool])
    default = PoolConfig.model_fields["disaggregate_min_tokens"].default
    rng = random.Random(0)
    async with httpx.AsyncClient(timeout=120) as c:
        for url in (always.url, selective.url, colocated.url):  # warm every path (NIXL handshake)
            await _ttft(c, url, await _prompt(c, colocated.url, 64, rng))
        print(f"\nTTFT p50 (ms), {ROUNDS} sequential streams each; disaggregate_min_tokens default {default}")
        print("prompt tokens | colocated | decode direct | PD always | PD selective")
        table = {}
        for tokens in LENGTHS:
            urls = {"colocated": colocated.url, "decode": decode.url, "always": always.url, "selective": selective.url}
            table[tokens] = p50 = await _p50(c, urls, tokens, rng)
            row = " | ".join(
                f"{p50[k] * 1e3:{w}.1f}"
                for k, w in (("colocated", 9), ("decode", 13), ("always", 9), ("selective", 12))
            )
            print(f"{tokens:13d} | {row}")
    first, last = LENGTHS[0], LENGTHS[-1]
    overhead = table[first]["always"] - table[first]["colocated"]
    slope = (table[last]["colocated"] - table[first]["colocated"]) / (last - first)
    print(f"PD hop at {first} tokens: +{overhead * 1e3:.1f} ms; colocated prefill: {slope * 1e6:.1f} us/token")
    short = table[first]
    print(f"{first} tokens, selective / colocated: {short['selective'] / short['colocated']:.2f}x (target 1.1x)")
