"""Direct checks (no gateway) that the real vLLM CPU fixtures do what the gateway
tests rely on: plain replicas answer and agree under greedy decoding, and a
NixlConnector prefill/decode pair hands KV over exactly like vLLM's P/D proxies do.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

# Fixture objects are tests/real/conftest.py's VllmServer and PDPair (not imported:
# conftest modules are not meant to be imported by tests).
VllmServer = PDPair = object
MODEL_NAME = "tiny"  # --served-model-name in conftest.SERVER_ARGS

PROMPT = "The old man watches the long road at night, and the river follows a small bird"
CHAT = [{"role": "user", "content": "Tell me a story about the quiet song near the sea."}]
GREEDY = {"temperature": 0, "max_tokens": 16}

EXTERNAL = 'vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}'
LOCAL = 'vllm:prompt_tokens_by_source_total{source="local_compute"}'


def post(url: str, path: str, body: dict, timeout: float = 120.0) -> dict:
    r = httpx.post(f"{url}{path}", json={"model": MODEL_NAME, **body}, timeout=timeout)
    assert r.status_code == 200, f"{url}{path}: {r.status_code} {r.text[:500]}"
    return r.json()


def text_of(resp: dict) -> str:
    choice = resp["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


def metric(url: str, selector: str) -> float:
    """Sum of the samples of `name{label="v",...}` (labels: a subset that must match)."""
    name, _, labels = selector.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    total, seen = 0.0, False
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = re.match(r"([\w:]+)(?:\{(.*)\})? ([-+\w.]+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in wanted.items()):
            total, seen = total + float(m.group(3)), True
    assert seen, f"{selector} not in {url}/metrics"
    return total


def wait_metric(url: str, selector: str, at_least: float, timeout_s: float = 10.0) -> float:
    """Metrics reach the API process a moment after the response: poll briefly."""
    deadline = time.monotonic() + timeout_s
    while (value := metric(url, selector)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


# ---------------------------------------------------------------- plain replicas


def test_replicas_answer_completions_and_chat(vllm_replicas: list[VllmServer]) -> None:
    for server in vllm_replicas:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == [MODEL_NAME]
        comp = post(server.url, "/v1/completions", {"prompt": PROMPT, **GREEDY})
        assert text_of(comp) and comp["choices"][0]["finish_reason"] == "length"
        assert comp["usage"]["completion_tokens"] == GREEDY["max_tokens"]
        chat = post(server.url, "/v1/chat/completions", {"messages": CHAT, **GREEDY})
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert text_of(chat) and chat["usage"]["completion_tokens"] == GREEDY["max_tokens"]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/completions", {"prompt": PROMPT}),
        ("/v1/completions", {"prompt": "a robot paints the blue door"}),
        ("/v1/chat/completions", {"messages": CHAT}),
    ],
)
def test_greedy_is_identical_across_replicas(vllm_replicas: list[VllmServer], path: str, body: dict) -> None:
    a, b = (text_of(post(s.url, path, {**body, **GREEDY})) for s in vllm_replicas)
    assert a == b
    assert a == text_of(post(vllm_replicas[0].url, path, {**body, **GREEDY}))  # and across calls


def test_stream_concatenates_to_the_non_streamed_text(vllm_replicas: list[VllmServer]) -> None:
    url = vllm_replicas[1].url
    full = text_of(post(url, "/v1/completions", {"prompt": PROMPT, **GREEDY}))
    parts = []
    body = {"model": MODEL_NAME, "prompt": PROMPT, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                parts += [c["text"] for c in json.loads(line[6:])["choices"]]
    assert "".join(parts) == full


# ---------------------------------------------------------------- NixlConnector P/D


def pd_round_trip(pair: PDPair, path: str, body: dict) -> tuple[dict, dict]:
    """What a P/D proxy does: 1-token non-streaming prefill on P, then D with P's params."""
    p = post(pair.prefill.url, path, {**body, "max_tokens": 1, "stream": False,
                                      "kv_transfer_params": {"do_remote_decode": True}})  # fmt: skip
    params = p.get("kv_transfer_params")
    assert isinstance(params, dict), f"P returned no kv_transfer_params: {p}"
    assert params["do_remote_prefill"] is True and params["remote_engine_id"]
    d = post(pair.decode.url, path, {**body, "kv_transfer_params": params})
    return p, d


@pytest.mark.slow
@pytest.mark.parametrize(
    "path,body",
    [("/v1/completions", {"prompt": PROMPT}), ("/v1/chat/completions", {"messages": CHAT})],
)
def test_nixl_pd_round_trip(vllm_pd_pair: PDPair, vllm_colocated: VllmServer, path: str, body: dict) -> None:
    d_url = vllm_pd_pair.decode.url
    external0, local0 = metric(d_url, EXTERNAL), metric(d_url, LOCAL)
    failed0 = metric(d_url, "vllm:nixl_num_failed_transfers_total")  # other tests kill P on purpose

    p, d = pd_round_trip(vllm_pd_pair, path, {**body, **GREEDY})

    prompt_tokens = p["usage"]["prompt_tokens"]
    assert d["usage"]["prompt_tokens"] == prompt_tokens
    assert d["usage"]["completion_tokens"] == GREEDY["max_tokens"]
    assert text_of(d) == text_of(post(vllm_colocated.url, path, {**body, **GREEDY}))
    assert text_of(d).startswith(text_of(p))  # D continues from P's first token
    # D took the whole prompt's KV from P and prefilled nothing itself.
    assert wait_metric(d_url, EXTERNAL, external0 + prompt_tokens) - external0 == prompt_tokens
    assert metric(d_url, LOCAL) == local0
    assert metric(d_url, "vllm:nixl_num_failed_transfers_total") == failed0


@pytest.mark.slow
async def test_prefill_restart_restores_pd(vllm_pd_pair: PDPair, vllm_colocated: VllmServer) -> None:
    """Kill P's whole process group (a crash), restart it on the same ports, P/D works again."""
    prefill = vllm_pd_pair.prefill
    assert prefill.handle is not None
    old_pgid = prefill.handle.pgid
    await asyncio.to_thread(prefill.handle.kill)
    assert not prefill.handle.alive()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{prefill.url}/health", timeout=5)

    startup_s = await vllm_pd_pair.restart()
    assert prefill.handle.pgid != old_pgid and startup_s > 0

    body = {"prompt": PROMPT + " again", **GREEDY}
    _, d = await asyncio.to_thread(pd_round_trip, vllm_pd_pair, "/v1/completions", body)
    assert text_of(d) == text_of(post(vllm_colocated.url, "/v1/completions", body))
