"""Tests for the simulated vLLM worker (workers/sim)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from workers.sim import SimServer, completion_text, count_tokens, render_chat

ROOT = Path(__file__).resolve().parents[1]
StartSim = Callable[..., Awaitable[SimServer]]


def sse_events(raw: str) -> list[str]:
    """Strict SSE framing check: only `data: ...\\n\\n` events, ending with [DONE]."""
    assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
    parts = raw.split("\n\n")
    assert parts[-1] == ""
    for p in parts[:-1]:
        assert p.startswith("data: ") and "\n" not in p, repr(p)
    return [p[len("data: ") :] for p in parts[:-1]]


async def stream_raw(
    c: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[httpx.Response, str]:
    async with c.stream("POST", url, json=body, headers=headers) as r:
        raw = b"".join([b async for b in r.aiter_raw()])
    return r, raw.decode()


def stream_texts(events: list[str], chat: bool) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in events[:-1]:
        for ch in json.loads(e)["choices"]:
            piece = ch["delta"].get("content", "") if chat else ch["text"]
            out[ch["index"]] = out.get(ch["index"], "") + piece
    return out


async def wait_for(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.002)
    return pred()


# -- basic API ---------------------------------------------------------------


async def test_health_models_and_unknown_paths(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim(model="m1", max_model_len=1234)
    r = await client.get(f"{s.url}/health")
    assert r.status_code == 200 and r.content == b""
    models = (await client.get(f"{s.url}/v1/models")).json()
    assert models["object"] == "list"
    m = models["data"][0]
    assert (m["id"], m["root"], m["owned_by"], m["max_model_len"]) == ("m1", "m1", "vllm", 1234)
    assert m["parent"] is None
    assert (await client.get(f"{s.url}/nope")).status_code == 404
    assert (await client.get(f"{s.url}/v1/completions")).status_code == 405


@pytest.mark.parametrize("chat", [False, True])
async def test_stream_equals_non_stream(sim: StartSim, client: httpx.AsyncClient, chat: bool) -> None:
    s = await sim(itl_ms=1)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict[str, Any] = {"model": "sim-model", "max_tokens": 7, "n": 2}
    if chat:
        body["messages"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me a story"}]
        prompts = [render_chat(body["messages"])]
    else:
        body["prompt"] = prompts = ["one two three", "four five"]
    full = (await client.post(s.url + path, json=body)).json()
    r, raw = await stream_raw(client, s.url + path, body | {"stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw)
    streamed = stream_texts(events, chat)
    expect = {pi * 2 + i: completion_text(p, i, 7) for pi, p in enumerate(prompts) for i in range(2)}
    assert streamed == expect
    for ch in full["choices"]:
        text = ch["message"]["content"] if chat else ch["text"]
        assert text == expect[ch["index"]]
        assert ch["finish_reason"] == "length"
    assert full["object"] == ("chat.completion" if chat else "text_completion")
    p_tokens = sum(count_tokens(p) for p in prompts)
    assert full["usage"]["prompt_tokens"] == p_tokens
    assert full["usage"]["completion_tokens"] == 7 * len(expect)
    assert all(t.split() and t.startswith(" ") for t in expect.values())


async def test_completion_chunk_shape_and_usage(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim()
    body = {"prompt": "a b c", "max_tokens": 3, "stream": True}
    _, raw = await stream_raw(client, s.url + "/v1/completions", body)
    events = [json.loads(e) for e in sse_events(raw)[:-1]]
    assert len(events) == 3 and all("usage" not in e for e in events)
    assert set(events[0]) == {"id", "object", "created", "model", "choices"}
    assert events[0]["choices"][0] == {
        "index": 0,
        "text": events[0]["choices"][0]["text"],
        "logprobs": None,
        "finish_reason": None,
        "stop_reason": None,
        "prompt_token_ids": None,
        "token_ids": None,
    }
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, "length"]
    assert events[-1]["system_fingerprint"] == s.system_fingerprint

    body["stream_options"] = {"include_usage": True}
    _, raw = await stream_raw(client, s.url + "/v1/completions", body)
    events = [json.loads(e) for e in sse_events(raw)[:-1]]
    # vLLM 0.32 leaves "usage" out of the token chunks (no "usage": null).
    assert len(events) == 4 and all("usage" not in e for e in events[:3])
    assert events[3]["choices"] == []
    assert events[3]["usage"] == {"prompt_tokens": 3, "total_tokens": 6, "completion_tokens": 3}


async def test_chat_stream_role_chunk_first(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim()
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r, raw = await stream_raw(client, s.url + "/v1/chat/completions", body, headers={"X-Request-Id": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    events = [json.loads(e) for e in sse_events(raw)[:-1]]
    assert all(e["id"] == "chatcmpl-req-42" and e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    assert (events[0]["prompt_token_ids"], events[0]["prompt_text"]) == (None, None)
    assert [e["choices"][0]["finish_reason"] for e in events[1:3]] == [None, "length"]
    assert events[3]["usage"]["completion_tokens"] == 2
    assert list(s.stats.request_ids) == ["req-42"]


@pytest.mark.parametrize(
    "path,body,status,etype",
    [
        ("/v1/completions", b"{not json", 400, "Bad Request"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "BadRequestError"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "five"}, 400, "Bad Request"),
        ("/v1/completions", {"max_tokens": 3}, 400, "BadRequestError"),
        ("/v1/completions", {"prompt": 5}, 400, "Bad Request"),
        ("/v1/chat/completions", {"max_tokens": 3}, 400, "Bad Request"),
        ("/v1/completions", {"prompt": "x", "model": "other"}, 404, "NotFoundError"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 5000}, 400, "BadRequestError"),
    ],
)
async def test_errors(sim: StartSim, client: httpx.AsyncClient, path: str, body: Any, status: int, etype: str) -> None:
    s = await sim()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await client.post(s.url + path, content=content)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == etype and err["code"] == status and isinstance(err["message"], str)
    if status == 404:
        assert err["message"] == "The model `other` does not exist. Valid aliases: sim-model."


async def test_last_request_body_reset_and_metrics(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim()
    body = {"prompt": "p q r s", "max_tokens": 2, "top_k": 5, "temperature": 0.3, "ignore_eos": True}
    await client.post(s.url + "/v1/completions", json=body)
    stats = (await client.get(s.url + "/sim/stats")).json()
    assert stats["last_request_body"] == body
    assert (stats["requests_total"], stats["completed"], stats["local_prefill_tokens"]) == (1, 1, 4)
    metrics = (await client.get(s.url + "/metrics")).text
    assert 'source="local_compute"} 4.0' in metrics
    assert 'source="external_kv_transfer"} 0.0' in metrics
    assert "vllm:num_requests_running{" in metrics
    await client.post(s.url + "/sim/reset")
    assert (await client.get(s.url + "/sim/stats")).json()["requests_total"] == 0


# -- connection handling ------------------------------------------------------


def _raw_request(path: str, body: dict[str, Any], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


async def test_keep_alive_and_connection_close(sim: StartSim) -> None:
    s = await sim()
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    req = _raw_request("/v1/completions", {"prompt": "a", "max_tokens": 2})
    writer.write(req + req)  # pipelined on one keep-alive connection
    data = b""
    while data.count(b'"object":"text_completion"') < 2:
        data += await asyncio.wait_for(reader.read(65536), 2)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    writer.write(_raw_request("/v1/completions", {"prompt": "a", "max_tokens": 2}, "Connection: close\r\n"))
    rest = await asyncio.wait_for(reader.read(), 2)  # read() to EOF: server must close
    assert rest.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in rest.lower()
    writer.close()


async def test_disconnect_mid_stream_cancels(sim: StartSim) -> None:
    s = await sim(itl_ms=20)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(_raw_request("/v1/completions", {"prompt": "a", "max_tokens": 1000, "stream": True}))
    assert b"data: " in await asyncio.wait_for(reader.read(4096), 2)
    assert s.stats.in_flight == 1
    writer.close()
    t0 = time.monotonic()
    assert await wait_for(lambda: s.stats.cancelled == 1, 0.1)
    print(f"cancel detected after {(time.monotonic() - t0) * 1000:.1f} ms")
    assert s.stats.in_flight == 0 and s.stats.completed == 0


async def test_fail_after_tokens_aborts(sim: StartSim, client: httpx.AsyncClient) -> None:
    s = await sim(fail_after_tokens=3, itl_ms=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(_raw_request("/v1/completions", {"prompt": "a", "max_tokens": 10, "stream": True}))
    raw = await asyncio.wait_for(reader.read(), 2)  # EOF without the terminating chunk
    writer.close()
    assert raw.count(b"data: {") == 3 and not raw.endswith(b"0\r\n\r\n")
    assert s.stats.aborted == 1
    with pytest.raises(httpx.HTTPError):
        await client.post(s.url + "/v1/completions", json={"prompt": "a", "max_tokens": 10})
    ok = await client.post(s.url + "/v1/completions", json={"prompt": "a", "max_tokens": 3})
    assert ok.status_code == 200 and (s.stats.aborted, s.stats.completed) == (2, 1)


# -- nixl (read mode) ----------------------------------------------------------


async def _nixl_prefill(c: httpx.AsyncClient, p: SimServer, body: dict[str, Any]) -> dict[str, Any]:
    pre = body | {"stream": False, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}}
    r = await c.post(p.url + "/v1/completions", json=pre, headers={"X-Request-Id": "r1"})
    assert r.status_code == 200, r.text
    return r.json()


async def test_nixl_round_trip(sim: StartSim, client: httpx.AsyncClient) -> None:
    p = await sim(role="prefill", ttft_ms=5)
    d = await sim(role="decode", itl_ms=1)
    both = await sim()
    body = {"prompt": "the quick brown fox jumps", "max_tokens": 6}
    pre = await _nixl_prefill(client, p, body)
    kv = pre["kv_transfer_params"]
    assert kv["do_remote_prefill"] is True and kv["do_remote_decode"] is False
    assert kv["remote_engine_id"] == p.config.engine_id and kv["remote_port"] == p.port
    assert kv["remote_host"] == "127.0.0.1" and kv["tp_size"] == 1
    assert all(isinstance(b, int) for b in kv["remote_block_ids"]) and kv["remote_block_ids"]
    assert pre["usage"]["completion_tokens"] == 1
    first = pre["choices"][0]["text"]

    r, raw = await stream_raw(client, d.url + "/v1/completions", body | {"stream": True, "kv_transfer_params": kv})
    decoded = stream_texts(sse_events(raw), chat=False)[0]
    colocated = (await client.post(both.url + "/v1/completions", json=body)).json()
    assert decoded == colocated["choices"][0]["text"] == completion_text(body["prompt"], 0, 6)
    assert decoded.startswith(first)
    assert (d.stats.external_prefill_tokens, d.stats.local_prefill_tokens) == (5, 0)
    assert (d.stats.kv_received, p.stats.kv_sent, p.stats.local_prefill_tokens) == (1, 1, 5)
    assert d.stats.last_request_body["kv_transfer_params"] == kv
    metrics = (await client.get(d.url + "/metrics")).text
    assert 'source="external_kv_transfer"} 5.0' in metrics

    # KV is handed out once: a second pull falls back to local recompute.
    again = await client.post(d.url + "/v1/completions", json=body | {"kv_transfer_params": kv})
    assert again.json()["choices"][0]["text"] == decoded
    assert (d.stats.kv_pull_failed, d.stats.local_prefill_tokens) == (1, 5)


async def test_nixl_validation_and_mismatch(sim: StartSim, client: httpx.AsyncClient) -> None:
    p = await sim(role="prefill")
    d = await sim(role="decode")
    url = p.url + "/v1/completions"
    remote = {"do_remote_decode": True}
    bad_stream = await client.post(
        url, json={"prompt": "a", "max_tokens": 1, "stream": True, "kv_transfer_params": remote}
    )
    assert bad_stream.status_code == 400
    bad_len = await client.post(url, json={"prompt": "a", "max_tokens": 4, "kv_transfer_params": remote})
    assert bad_len.status_code == 400
    kv = (await _nixl_prefill(client, p, {"prompt": "alpha beta"}))["kv_transfer_params"]
    r = await client.post(d.url + "/v1/completions", json={"prompt": "something else", "kv_transfer_params": kv})
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"


async def test_nixl_kv_expires(sim: StartSim, client: httpx.AsyncClient) -> None:
    p = await sim(role="prefill", kv_hold_s=0.05)
    d = await sim(role="decode")
    kv = (await _nixl_prefill(client, p, {"prompt": "x y"}))["kv_transfer_params"]
    await asyncio.sleep(0.15)
    assert p.stats.kv_expired == 1
    r = await client.post(d.url + "/v1/completions", json={"prompt": "x y", "kv_transfer_params": kv})
    assert r.status_code == 200 and d.stats.kv_pull_failed == 1 and d.stats.external_prefill_tokens == 0


# -- neuron-legacy (immediate first token) ---------------------------------------


async def _legacy_pair(sim: StartSim, **dkw: Any) -> tuple[SimServer, SimServer]:
    p = await sim(role="prefill", kv_protocol="neuron-legacy", ttft_ms=30)
    d = await sim(role="decode", kv_protocol="neuron-legacy", kv_peers=[p.url], itl_ms=2, **dkw)
    return p, d


@pytest.mark.parametrize("chat", [False, True])
async def test_legacy_decode_waits_and_reemits(sim: StartSim, client: httpx.AsyncClient, chat: bool) -> None:
    p, d = await _legacy_pair(sim)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict[str, Any] = {"max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    if chat:
        body["messages"] = [{"role": "user", "content": "why is the sky blue"}]
    else:
        body["prompt"] = "why is the sky blue"
    hdr = {"X-Request-Id": "legacy-1"}
    dec = asyncio.ensure_future(stream_raw(client, d.url + path, body, hdr))
    await asyncio.sleep(0.05)  # D is already waiting when P starts
    pre = asyncio.ensure_future(stream_raw(client, p.url + path, body | {"max_tokens": 1}, hdr))
    (_, p_raw), (d_resp, d_raw) = await asyncio.gather(pre, dec)
    assert d_resp.status_code == 200 and d_resp.headers["x-request-id"] == "legacy-1"
    p_events, d_events = sse_events(p_raw), sse_events(d_raw)
    p_text = stream_texts(p_events, chat)[0]
    d_text = stream_texts(d_events, chat)[0]
    prompt = render_chat(body["messages"]) if chat else body["prompt"]
    assert d_text == completion_text(prompt, 0, 5)
    assert d_text.startswith(p_text) and len(p_text.split()) == 1
    d_json = [json.loads(e) for e in d_events[:-1]]
    if chat:
        assert d_json[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert d_json[1]["choices"][0]["delta"]["content"] == p_text
    else:
        assert d_json[0]["choices"][0]["text"] == p_text
    assert d_json[-1]["usage"]["completion_tokens"] == 5
    assert d_json[-1]["usage"]["prompt_tokens"] == count_tokens(prompt)
    assert (d.stats.external_prefill_tokens, d.stats.local_prefill_tokens) == (count_tokens(prompt), 0)
    assert (p.stats.kv_sent, d.stats.kv_received, p.stats.local_prefill_tokens) == (1, 1, count_tokens(prompt))


async def test_legacy_decode_non_stream_after_prefill(sim: StartSim, client: httpx.AsyncClient) -> None:
    p, d = await _legacy_pair(sim)
    hdr = {"X-Request-Id": "legacy-2"}
    body = {"prompt": "a b c", "max_tokens": 4}
    await client.post(p.url + "/v1/completions", json=body | {"max_tokens": 1}, headers=hdr)
    r = await client.post(d.url + "/v1/completions", json=body, headers=hdr)
    assert r.json()["choices"][0]["text"] == completion_text("a b c", 0, 4)


async def test_legacy_decode_times_out(sim: StartSim, client: httpx.AsyncClient) -> None:
    _, d = await _legacy_pair(sim, kv_wait_s=0.3)
    t0 = time.monotonic()
    r = await client.post(
        d.url + "/v1/completions", json={"prompt": "a", "stream": True}, headers={"X-Request-Id": "never"}
    )
    assert 0.3 <= time.monotonic() - t0 < 2
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "KV for request never not received"
    assert d.stats.kv_wait_timeouts == 1 and d.stats.in_flight == 0
    no_id = await client.post(d.url + "/v1/completions", json={"prompt": "a"})
    assert no_id.status_code == 400


async def test_legacy_decode_dead_peer_times_out(sim: StartSim, client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    d = await sim(role="decode", kv_protocol="neuron-legacy", kv_peers=[dead], kv_wait_s=0.2)
    r = await client.post(d.url + "/v1/completions", json={"prompt": "a"}, headers={"X-Request-Id": "x"})
    assert r.status_code == 503


# -- CLI + throughput sanity (printed, not asserted) ------------------------------


class _Sink(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done, self.events, self.tail = done, 0, b""

    def data_received(self, data: bytes) -> None:
        self.events += data.count(b"data: {")
        self.tail = (self.tail + data)[-16:]
        if self.tail.endswith(b"0\r\n\r\n") and not self.done.done():
            self.done.set_result(self.events)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.events)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_cli_throughput_sanity() -> None:
    streams, tokens, itl_ms = 512, 128, 20
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.sim", "--port", str(port), "--itl-ms", str(itl_ms)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(200):
                try:
                    if (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        req = _raw_request("/v1/completions", {"prompt": "bench", "max_tokens": tokens, "stream": True})
        futs: list[asyncio.Future[int]] = []
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        for _ in range(streams):
            fut: asyncio.Future[int] = loop.create_future()
            tr, _ = await loop.create_connection(lambda f=fut: _Sink(f), "127.0.0.1", port)
            tr.write(req)
            futs.append(fut)
        counts = await asyncio.wait_for(asyncio.gather(*futs), 120)
        wall, cpu = time.monotonic() - t0, _cpu_s(proc.pid) - cpu0
        chunks = sum(counts)
        print(
            f"\nsim throughput: {streams} streams x {tokens} tok @ {itl_ms} ms: {chunks} chunks "
            f"in {wall:.2f}s (ideal {tokens * itl_ms / 1000:.2f}s) = {chunks / wall:,.0f} chunks/s;"
            f" server CPU {cpu:.2f}s = {cpu / chunks * 1e6:.1f} us/chunk"
        )
        assert chunks == streams * tokens
    finally:
        proc.terminate()
        proc.wait(5)


async def test_prefill_advertises_the_address_it_is_given_for_kv_pickup(sim, client):
    # In Kubernetes the prefill pod binds 0.0.0.0 and advertises its pod IP (--advertise-host).
    from workers.sim.config import config_from_args

    assert config_from_args(["--advertise-host", "10.1.2.3"]).advertise_host == "10.1.2.3"
    p = await sim(role="prefill", kv_protocol="nixl", host="0.0.0.0", advertise_host="10.1.2.3")
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}}
    answer = (await client.post(f"http://127.0.0.1:{p.port}/v1/completions", json=body)).json()
    assert answer["kv_transfer_params"]["remote_host"] == "10.1.2.3"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_simulator_bug_answers_instead_of_hanging(
    sim: StartSim, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    import workers.sim.server as server_module

    def broken(*_: Any) -> None:
        raise RuntimeError("injected")

    s = await sim()
    monkeypatch.setattr(server_module, "Choices", broken)
    r = await client.post(s.url + "/v1/completions", json={"prompt": "a", "stream": stream})
    assert r.status_code == 500 and r.json()["error"]["type"] == "InternalServerError"
    assert (s.stats.in_flight, s.stats.errors) == (0, 1)
