"""HTTP/1.1 as clients speak it to the gateway, byte by byte: keep-alive, close, chunked
request bodies, 100-continue, pipelining, HTTP/1.0 (the short path and uvicorn's own)."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.handler import Handler

BODY = json.dumps({"model": "sim-model", "prompt": "a b c", "max_tokens": 3, "stream": True}).encode()
PLAIN = json.dumps({"model": "sim-model", "prompt": "a b c", "max_tokens": 3}).encode()


def _post(body: bytes, path: str = "/v1/completions", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        path.encode(),
        version,
        len(body),
        extra,
        body,
    )


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """Reads one response, checking its framing: Content-Length, chunked, or close-delimited."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    if b"content-length" in headers:
        return int(status_line.split()[1]), headers, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding") != b"chunked":
        return int(status_line.split()[1]), headers, await asyncio.wait_for(reader.read(), 5)
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        chunk = await reader.readexactly(size + 2)
        assert chunk.endswith(b"\r\n")
        if size == 0:
            return int(status_line.split()[1]), headers, body
        body += chunk[:-2]


@pytest.fixture(params=["gateway", "uvicorn"])
async def gw(request, sim, gateway):
    """Each test runs on the gateway's own HTTP protocol and on plain uvicorn (its fallback)."""
    worker = await sim()
    return await gateway(
        [{"name": "dp", "workers": [worker.url]}], listen={"host": "127.0.0.1", "port": 0, "http": request.param}
    )


async def _connect(gw) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(gw.host, gw.port)


async def test_keep_alive_connection_serves_streams_and_plain_requests_in_turn(gw):
    reader, writer = await _connect(gw)
    for body in (BODY, PLAIN, BODY):
        writer.write(_post(body))
        status, headers, payload = await _response(reader)
        assert status == 200 and b"connection" not in headers and headers[b"x-request-id"]
        if body is BODY:
            assert headers[b"content-type"].startswith(b"text/event-stream")
            assert payload.startswith(b"data: {") and payload.endswith(b"data: [DONE]\n\n")
        else:
            assert json.loads(payload)["choices"][0]["text"]
    writer.close()


async def test_connection_close_is_honoured(gw):
    reader, writer = await _connect(gw)
    writer.write(_post(BODY, extra=b"connection: close\r\n"))
    status, headers, payload = await _response(reader)
    assert status == 200 and headers[b"connection"] == b"close"
    assert payload.endswith(b"data: [DONE]\n\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the gateway closed the connection


async def test_pipelined_requests_are_answered_in_order(gw):
    reader, writer = await _connect(gw)
    ids = (b"first", b"second", b"third")
    writer.write(
        b"".join(_post(BODY if i != 1 else PLAIN, extra=b"x-request-id: %s\r\n" % rid) for i, rid in enumerate(ids))
    )
    for rid in ids:
        status, headers, _ = await _response(reader)
        assert status == 200 and headers[b"x-request-id"] == rid
    writer.close()


async def test_chunked_request_body_and_expect_continue_are_served(gw):
    reader, writer = await _connect(gw)
    half = len(BODY) // 2
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, BODY[:half], len(BODY) - half, BODY[half:])
    )
    status, _, payload = await _response(reader)
    assert status == 200 and payload.endswith(b"data: [DONE]\n\n")
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(PLAIN)
    )
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(PLAIN)
    status, _, payload = await _response(reader)
    assert status == 200 and json.loads(payload)["object"] == "text_completion"
    writer.close()


async def test_http_1_0_and_query_strings_are_served(gw):
    reader, writer = await _connect(gw)
    writer.write(_post(PLAIN, version=b"1.0"))
    status, headers, payload = await _response(reader)
    assert status == 200 and json.loads(payload)["choices"]
    assert await asyncio.wait_for(reader.read(), 5) == b""
    reader, writer = await _connect(gw)
    writer.write(_post(BODY, path="/v1/completions?trace=1"))
    status, _, payload = await _response(reader)
    assert status == 200 and payload.endswith(b"data: [DONE]\n\n")
    writer.close()


async def test_errors_on_the_short_path_keep_the_connection_usable(gw):
    reader, writer = await _connect(gw)
    writer.write(_post(b'{"model": "sim-model", "prompt": '))  # malformed JSON
    status, headers, payload = await _response(reader)
    assert status == 400 and json.loads(payload)["error"]["code"] == "invalid_json"
    writer.write(_post(BODY))
    status, _, payload = await _response(reader)
    assert status == 200 and payload.endswith(b"data: [DONE]\n\n")
    writer.close()


async def test_an_internal_failure_answers_500_and_closes(gw, monkeypatch):
    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Handler, "__call__", broken)
    reader, writer = await _connect(gw)
    writer.write(_post(BODY))
    status, headers, payload = await _response(reader)
    assert status == 500 and payload == b"Internal Server Error"
    assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_oversized_body_is_refused_before_it_is_read(sim, gateway):
    worker = await sim()
    gw = await gateway([{"name": "dp", "workers": [worker.url]}], limits={"max_body_bytes": 1024})
    reader, writer = await _connect(gw)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 5000000\r\n\r\n{")
    status, _, payload = await _response(reader)
    assert status == 413 and json.loads(payload)["error"]["code"] == "body_too_large"
    writer.close()
