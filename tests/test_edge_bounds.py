"""Edge bounds (issue 23): every resource has an owner and a bound, every odd input a clean answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging

import pytest

from tests.conftest import wait_until
from tests.faulty import FaultyWorker

ADMIN = "adm"


async def _replicas(sim, gateway, count: int = 1, **sections):
    sims = [await sim() for _ in range(count)]
    gw = await gateway([{"name": "dp", "workers": [s.url for s in sims]}], **sections)
    return sims, gw


async def test_ready_is_503_once_every_worker_is_drained(sim, gateway, client):
    sims, gw = await _replicas(sim, gateway, 2, auth={"admin_keys": [ADMIN]})
    await wait_until(lambda: gw.gateway.ready)
    assert (await client.get(f"{gw.url}/ready")).status_code == 200
    admin = {"authorization": f"Bearer {ADMIN}"}
    for s in sims:
        resp = await client.post(f"{gw.url}/admin/workers/drain", json={"url": s.url}, headers=admin)
        assert resp.status_code == 200, resp.text
    resp = await client.get(f"{gw.url}/ready")
    assert resp.status_code == 503
    assert resp.json() == {"ready": False, "pools": {"dp": False}}
    await client.post(f"{gw.url}/admin/workers/undrain", json={"url": sims[0].url}, headers=admin)
    assert (await client.get(f"{gw.url}/ready")).status_code == 200


async def test_probes_answer_head_like_get_without_a_body(sim, gateway, client):
    _, gw = await _replicas(sim, gateway)
    await wait_until(lambda: gw.gateway.ready)
    for path in ("/health", "/ready", "/metrics"):
        got, head = await client.get(gw.url + path), await client.head(gw.url + path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]


async def _exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a fresh connection and read until the gateway closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("size", [65 * 1024, 100 * 1024])
async def test_a_head_just_over_the_bound_gets_431(sim, gateway, size):
    _, gw = await _replicas(sim, gateway)
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * size + b"\r\ncontent-length: 2\r\n\r\n{}"
    answer = await _exchange(gw.port, head)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


async def test_a_huge_model_name_is_echoed_cut_in_the_404_and_the_access_line(sim, gateway, client, caplog):
    caplog.set_level(logging.INFO)
    _, gw = await _replicas(sim, gateway)
    model = "m" * 1_000_000
    resp = await client.post(f"{gw.url}/v1/completions", json={"model": model, "prompt": "x"})
    assert resp.status_code == 404
    assert len(resp.content) < 2000
    assert "more)" in resp.json()["error"]["message"]
    await wait_until(lambda: any(r.name == "pd_gateway.access" for r in caplog.records))
    logged = sum(len(r.getMessage()) for r in caplog.records)
    assert logged < 5000, logged


async def test_prompts_times_n_is_bounded_in_the_openai_envelope(sim, gateway, client):
    _, gw = await _replicas(sim, gateway)  # limits.max_sequences: 256
    await wait_until(lambda: gw.gateway.ready)
    url = f"{gw.url}/v1/completions"
    resp = await client.post(url, json={"model": "sim-model", "prompt": ["a"] * 33, "n": 8, "max_tokens": 1})
    assert resp.status_code == 400, resp.text[:300]
    error = resp.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("too_many_sequences", "n", "invalid_request_error")
    ok = await client.post(url, json={"model": "sim-model", "prompt": ["a"] * 32, "n": 8, "max_tokens": 1})
    assert ok.status_code == 200, ok.text[:300]
    assert len(ok.json()["choices"]) == 256


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be", "utf-8-sig"])
async def test_json_bodies_must_be_utf8(sim, gateway, client, encoding):
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl", kv_peers=[p.url])
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
        ]
    )
    await wait_until(lambda: gw.gateway.ready)
    body = json.dumps({"model": "sim-model", "prompt": "hi \\ud800", "max_tokens": 2}).encode(encoding)
    resp = await client.post(f"{gw.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["error"]["code"] == "invalid_json"


def _http_answer(body: bytes, content_type: bytes = b"application/json", status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (status, content_type, len(body), body)


@pytest.mark.parametrize("stream", [False, True])
async def test_nonsense_usage_numbers_count_as_absent(gateway, client, caplog, stream):
    caplog.set_level(logging.INFO, logger="pd_gateway.access")
    usage = b'{"prompt_tokens": -5, "completion_tokens": 1%s, "total_tokens": 3}' % (b"0" * 400)
    if stream:
        events = b'data: {"choices": [{"index": 0, "text": "hi"}], "usage": %s}\n\ndata: [DONE]\n\n' % usage
        answer = _http_answer(events, b"text/event-stream")
    else:
        answer = _http_answer(b'{"choices": [{"index": 0, "text": "hi"}], "usage": %s}' % usage)
    w = await FaultyWorker("scripted", [answer]).start()
    try:
        gw = await gateway([{"name": "dp", "workers": [w.url]}])
        await wait_until(lambda: gw.gateway.ready)
        body = {"model": "sim-model", "prompt": "x", "stream": stream}
        resp = await client.post(f"{gw.url}/v1/completions", json=body)
        assert resp.status_code == 200
        lines = await _access_lines(caplog)
        assert "status=200" in lines[0] and "prompt_tokens" not in lines[0] and "completion_tokens" not in lines[0]
        metrics = (await client.get(f"{gw.url}/metrics")).text
        assert "pd_gateway_requests_total{" in metrics
    finally:
        await w.close()


async def _access_lines(caplog) -> list[str]:
    await wait_until(lambda: any(r.name == "pd_gateway.access" for r in caplog.records))
    return [r.getMessage() for r in caplog.records if r.name == "pd_gateway.access"]


ANSWER = b'{"choices": [{"index": 0, "text": "hi"}]}'
CONTINUE_THEN_OK = [b"HTTP/1.1 100 Continue\r\n\r\n" + _http_answer(ANSWER)]
REDIRECT = [b"HTTP/1.1 302 Found\r\nlocation: http://elsewhere/\r\ncontent-length: 5\r\n\r\nmoved"]
MANY_HEADERS = [_http_answer(ANSWER).replace(b"\r\n", b"\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(10_000)), 1)]
HUGE_HEADER = [b"HTTP/1.1 200 OK\r\nx-big: ", b"v" * 1_000_000, b""]  # then it stalls


@pytest.mark.parametrize(
    ("script", "status"), [(CONTINUE_THEN_OK, 200), (REDIRECT, 502), (MANY_HEADERS, 502), (HUGE_HEADER, 502)]
)
async def test_a_workers_interim_redirect_or_endless_head_does_not_reach_the_client(gateway, client, script, status):
    w = await FaultyWorker("scripted", script).start()
    try:
        gw = await gateway([{"name": "dp", "workers": [w.url]}], retries={"attempts": 0})
        await wait_until(lambda: gw.gateway.ready)
        resp = await client.post(f"{gw.url}/v1/completions", json={"model": "sim-model", "prompt": "x"})
        assert resp.status_code == status, resp.text[:300]
        if status == 200:
            assert resp.content == ANSWER
        else:
            assert resp.json()["error"]["type"] == "upstream_error"
            assert "location" not in resp.headers
    finally:
        await w.close()


async def test_a_worker_dripping_bytes_without_an_event_hits_the_first_byte_deadline(gateway, client):
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    drip = [b"1\r\n%c\r\n" % c for c in b"data: {" * 20]  # 140 bytes, 50 ms apart: never a whole event
    w = await FaultyWorker("scripted", [head, *drip], gap_s=0.05).start()
    try:
        gw = await gateway(
            [{"name": "dp", "workers": [w.url]}], timeouts={"first_byte_s": 0.5}, retries={"attempts": 0}
        )
        await wait_until(lambda: gw.gateway.ready)
        body = {"model": "sim-model", "prompt": "x", "stream": True}
        resp = await client.post(f"{gw.url}/v1/completions", json=body)
        assert resp.status_code == 504, resp.text[:300]
        assert resp.json()["error"]["code"] == "timeout"
    finally:
        await w.close()


async def test_a_deeply_nested_admin_body_is_a_400(sim, gateway, client):
    _, gw = await _replicas(sim, gateway, auth={"admin_keys": [ADMIN]})
    nested = b'{"url": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = await client.post(
        f"{gw.url}/admin/workers/drain", content=nested, headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["error"]["type"] == "invalid_request_error"


async def test_the_trailing_slash_redirect_does_not_reflect_the_host(sim, gateway, client):
    _, gw = await _replicas(sim, gateway, auth={"admin_keys": [ADMIN]})
    resp = await client.get(f"{gw.url}/admin/workers/?a=1", headers={"host": "evil.example"})
    assert resp.status_code == 307
    assert resp.headers["location"] == "/admin/workers?a=1"
    followed = await client.get(
        f"{gw.url}/admin/workers/", headers={"authorization": f"Bearer {ADMIN}"}, follow_redirects=True
    )
    assert followed.status_code == 200 and "workers" in followed.json()


async def test_cross_origin_simple_posts_are_refused_and_the_dashboard_is_locked_down(sim, gateway, client):
    _, gw = await _replicas(sim, gateway)
    await wait_until(lambda: gw.gateway.ready)
    url, body = f"{gw.url}/v1/completions", json.dumps({"model": "sim-model", "prompt": "x", "max_tokens": 1})
    origin = {"origin": "https://evil.example"}
    for simple in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = origin if simple is None else {**origin, "content-type": simple}
        resp = await client.post(url, content=body, headers=headers)
        assert resp.status_code == 415, (simple, resp.text[:300])
        assert resp.json()["error"]["type"] == "invalid_request_error"
    as_json = await client.post(url, content=body, headers={**origin, "content-type": "application/json"})
    assert as_json.status_code == 200
    curl_d = await client.post(url, content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert curl_d.status_code == 200  # `curl -d` without -H and without an Origin: still served

    page = await client.get(f"{gw.url}/dashboard")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    script = page.text.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp  # the page's own script may still run


async def test_a_sim_keeps_a_bounded_number_of_request_ids(sim, client):
    s = await sim()
    body = {"model": "sim-model", "prompt": "x", "max_tokens": 1}
    for batch in range(11):
        answers = await asyncio.gather(
            *(
                client.post(f"{s.url}/v1/completions", json=body, headers={"x-request-id": f"r{batch}-{i}"})
                for i in range(100)
            )
        )
        assert all(a.status_code == 200 for a in answers)
    assert s.stats.requests_total == 1100
    assert len(s.stats.request_ids) <= 1024
    assert "r10-99" in s.stats.request_ids  # the latest are kept
    assert "r10-99" in (await client.get(f"{s.url}/sim/stats")).json()["request_ids"]
