"""Hostile and careless clients: each gets a clear answer, and nothing they do leaks or
reaches a worker that should not see it."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import httpx

from tests.conftest import sse_payloads, wait_until

COMPLETION = {"model": "sim-model", "prompt": "hi", "max_tokens": 3}


def _raw_request(
    body: bytes, extra: bytes = b"", version: bytes = b"HTTP/1.1", path: bytes = b"/v1/completions"
) -> bytes:
    return b"POST %s %s\r\nhost: x\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s" % (
        path,
        version,
        extra,
        len(body),
        body,
    )


async def _exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a fresh connection and read until the gateway closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


def _error(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    return body["error"]


async def test_deeply_nested_bodies_get_400_and_give_back_their_slot(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"max_inflight": 4, "queue": 0})
    nested = b'{"model":"sim-model","prompt":"hi","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    for _ in range(20):  # each used to keep its in-flight slot: the fifth got 429
        resp = await client.post(f"{gw.url}/v1/completions", content=nested)
        assert resp.status_code == 400, resp.text
        assert "nest" in _error(resp)["message"]
    assert gw.gateway.admission.inflight == 0
    assert (await client.post(f"{gw.url}/v1/completions", json=COMPLETION)).status_code == 200


async def test_an_internal_failure_is_a_json_500_that_releases_everything(sim, gateway, client, monkeypatch):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(gw.gateway, "pool_for", broken)
    resp = await client.post(f"{gw.url}/v1/completions", json=COMPLETION)
    assert resp.status_code == 500
    assert _error(resp)["type"] == "server_error"
    assert resp.headers["x-request-id"]
    assert gw.gateway.admission.inflight == 0


async def test_client_values_in_log_lines_are_escaped(sim, gateway, client, caplog):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    with caplog.at_level(logging.INFO):
        resp = await client.post(
            f"{gw.url}/v1/completions", json={"model": "x\r\n2026-12-02 00:00:00 INFO forged line", "prompt": "hi"}
        )
    assert resp.status_code == 404
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("pd_gateway")]
    assert any("forged line" in line for line in logged), logged
    assert not any("\n" in line or "\r" in line for line in logged), logged


async def test_a_client_that_gives_up_in_the_admission_queue_never_reaches_a_worker(sim, gateway, client):
    a = await sim(itl_ms=20)
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"max_inflight": 1, "queue": 4})
    first = asyncio.create_task(
        client.post(f"{gw.url}/v1/completions", json={**COMPLETION, "max_tokens": 30, "stream": True})
    )
    await wait_until(lambda: a.stats.in_flight == 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(_raw_request(json.dumps(COMPLETION).encode()))
    await writer.drain()
    await wait_until(lambda: gw.gateway.admission.queued == 1)
    writer.close()  # gives up while queued
    await wait_until(lambda: gw.gateway.admission.queued == 0)
    assert (await first).status_code == 200
    await asyncio.sleep(0)  # the slot has been handed on by now, if at all
    assert (await client.post(f"{gw.url}/v1/completions", json=COMPLETION)).status_code == 200
    assert a.stats.requests_total == 2, "the abandoned request was sent to the worker"
    assert gw.gateway.admission.inflight == 0


async def test_request_ids_are_bounded_and_printable_ascii_with_one_rule_for_both_response_kinds(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    url = f"{gw.url}/v1/completions"
    ok = await client.post(url, json=COMPLETION, headers={"x-request-id": "trace-42.a:b_c"})
    assert ok.headers["x-request-id"] == "trace-42.a:b_c"
    for given in ("x" * 300, "with space", "caf\xe9"):
        for stream in (False, True):
            resp = await client.post(
                url, json={**COMPLETION, "stream": stream}, headers=[(b"x-request-id", given.encode("latin-1"))]
            )
            assert resp.status_code == 200
            rid = resp.headers["x-request-id"]
            assert rid != given and len(rid) == 32 and rid.isalnum(), (given, stream, rid)
            assert a.stats.last_request_headers.get("x-request-id") == rid


async def test_an_http_1_0_client_gets_a_close_delimited_stream(sim, gateway):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    body = json.dumps({**COMPLETION, "stream": True}).encode()
    answer = await _exchange(gw.port, _raw_request(body, version=b"HTTP/1.0"))
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"), head
    assert b"transfer-encoding" not in head.lower(), head
    assert len(sse_payloads(content)) == 3 + 1  # three tokens, [DONE]; the body ends where the connection does


async def test_best_of_is_limited_like_n(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"max_n": 4})
    resp = await client.post(f"{gw.url}/v1/completions", json={**COMPLETION, "best_of": 100000})
    assert resp.status_code == 400
    assert "best_of" in _error(resp)["message"]


async def test_client_sent_kv_transfer_params_are_dropped_unless_the_pool_trusts_them(sim, gateway, client):
    a = await sim()
    hostile = {**COMPLETION, "kv_transfer_params": {"do_remote_prefill": True, "remote_host": "10.6.6.6"}}
    gw = await gateway([{"name": "dp", "workers": [a.url]}])
    resp = await client.post(f"{gw.url}/v1/completions", json=hostile)
    assert resp.status_code == 200, resp.text
    assert "kv_transfer_params" not in a.stats.last_request_body
    assert a.stats.last_request_body["prompt"] == "hi"
    trusting = await gateway([{"name": "dp", "workers": [a.url], "trust_kv_transfer_params": True}])
    await client.post(f"{trusting.url}/v1/completions", json=hostile)
    assert a.stats.last_request_body["kv_transfer_params"]["remote_host"] == "10.6.6.6"


async def test_a_pd_pool_without_prompt_lists_answers_a_list_of_prompts_with_a_clear_400(sim, gateway, client):
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl")
    pool = {"name": "pd", "kind": "pd", "protocol": "nixl", "prefill": [p.url], "decode": [d.url]}
    gw = await gateway([{**pool, "split_prompt_lists": False}])  # on: tests/test_pd_prompt_lists.py
    resp = await client.post(f"{gw.url}/v1/completions", json={**COMPLETION, "prompt": ["a", "b"]})
    assert resp.status_code == 400
    error = _error(resp)
    assert error["param"] == "prompt" and "one prompt" in error["message"], error
    assert p.stats.requests_total == 0


async def test_slow_and_oversized_request_heads_are_cut_off(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"header_timeout_s": 0.5})
    slow = []
    for _ in range(200):  # slowloris: a partial head, then nothing
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
        slow.append(s)
    assert (await client.post(f"{gw.url}/v1/completions", json=COMPLETION)).status_code == 200

    def closed(s: socket.socket) -> bool:
        s.setblocking(False)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return False
        return data == b"" or data.startswith(b"HTTP/1.1 408")

    await wait_until(lambda: all(closed(s) for s in slow), timeout_s=5)
    for s in slow:
        s.close()
    huge_value = await _exchange(gw.port, _raw_request(b"{}", extra=b"x-big: " + b"v" * 1_000_000 + b"\r\n"))
    assert huge_value.startswith(b"HTTP/1.1 431"), huge_value[:100]
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(100_000))
    assert (await _exchange(gw.port, _raw_request(b"{}", extra=many))).startswith(b"HTTP/1.1 431")
    few_bytes_many_headers = b"".join(b"x%d: v\r\n" % i for i in range(300))  # 2.5 KB, over the 256 allowed
    refused = await _exchange(gw.port, _raw_request(b"{}", extra=few_bytes_many_headers))
    assert refused.startswith(b"HTTP/1.1 431") and b"more than 256 headers" in refused, refused[:300]


async def test_a_stalled_body_gets_408_and_a_slow_steady_one_is_served(sim, gateway):
    """`body_timeout_s` bounds the wait between two reads of the body, not the whole body."""
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"body_timeout_s": 0.5})
    body = json.dumps(COMPLETION).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(_raw_request(body)[: -len(body) + 5])  # the head and 5 bytes, then nothing
    stalled = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert stalled.startswith(b"HTTP/1.1 408") and b"request_timeout" in stalled, stalled[:300]

    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    request = _raw_request(body)
    head = len(request) - len(body)
    writer.write(request[:head])
    for i in range(0, len(body), len(body) // 4 + 1):  # the body in 4 parts, 0.3 s apart: 0.9 s in all
        await asyncio.sleep(0.3)
        writer.write(body[i : i + len(body) // 4 + 1])
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200"), status


async def test_duplicate_authorization_headers_are_refused_on_every_route(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], auth={"api_keys": ["good"]})
    twice = [(b"authorization", b"Bearer good"), (b"authorization", b"Bearer bad")]
    resp = await client.post(f"{gw.url}/v1/completions", json=COMPLETION, headers=twice)
    assert resp.status_code == 400 and "Authorization" in _error(resp)["message"]
    assert (await client.get(f"{gw.url}/v1/models", headers=twice)).status_code == 400
    assert a.stats.requests_total == 0


async def test_metrics_and_docs_follow_their_access_setting(sim, gateway, client):
    a = await sim()
    keys = {"api_keys": ["k"], "admin_keys": ["adm"]}
    default = await gateway([{"name": "dp", "workers": [a.url]}], auth=keys)
    assert (await client.get(f"{default.url}/metrics")).status_code == 200  # documented default: open
    assert (await client.get(f"{default.url}/docs")).status_code == 401  # documented default: an API key
    assert (await client.get(f"{default.url}/docs", headers={"authorization": "Bearer k"})).status_code == 200
    locked = await gateway([{"name": "dp", "workers": [a.url]}], auth={**keys, "metrics": "admin", "docs": "off"})
    assert (await client.get(f"{locked.url}/metrics", headers={"authorization": "Bearer k"})).status_code == 401
    assert (await client.get(f"{locked.url}/metrics", headers={"authorization": "Bearer adm"})).status_code == 200
    assert (await client.get(f"{locked.url}/openapi.json", headers={"authorization": "Bearer adm"})).status_code == 404


async def test_input_that_would_hang_a_worker_is_refused_and_never_ejects_it(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], timeouts={"first_byte_s": 1})
    bad = b'{"model":"sim-model","prompt":"a \\udc00 lone surrogate","max_tokens":3}'
    for _ in range(5):
        resp = await client.post(f"{gw.url}/v1/completions", content=bad)
        assert resp.status_code == 400, resp.text
        assert "surrogate" in _error(resp)["message"]
    (ep,) = gw.gateway.pools[0].endpoints
    assert ep.healthy and ep.ejections == 0 and ep.errors == 0
    assert a.stats.requests_total == 0
    paired = json.dumps({**COMPLETION, "prompt": "an emoji \U0001f600"}).encode()  # a valid surrogate pair
    assert (await client.post(f"{gw.url}/v1/completions", content=paired)).status_code == 200
