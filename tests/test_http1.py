"""The gateway's upstream HTTP/1.1 client against raw servers that misbehave in ways real ones do."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.http1 import ConnectionBroken, ConnectionPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve():
    """Start a raw server with a handler; returns its URL. Servers close at teardown."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/completions"

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def pool():
    pool = ConnectionPool(connect_timeout_s=2)
    yield pool
    pool.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def test_a_keep_alive_connection_the_worker_closed_while_idle_is_replaced_transparently(serve, pool):
    connections = 0

    async def answer_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()  # like a worker's keep-alive timeout, but at once

    url = await serve(answer_once_then_close)
    for payload in (b"first", b"second"):
        resp = await pool.request("POST", url, b"", payload)
        await resp.head
        assert await resp.read() == payload
        resp.release()
        await asyncio.sleep(0.05)  # the server's close reaches the pooled connection
    assert connections == 2


async def test_a_reused_connection_that_breaks_without_answering_is_retried_once(serve, pool):
    seen: list[bytes] = []

    async def second_request_dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await _read_request(reader)
            seen.append(body)
            if len(seen) == 2:  # read the request, then vanish without a byte
                writer.transport.abort()
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    url = await serve(second_request_dies)
    for _ in range(2):
        resp = await pool.request("POST", url, b"", b"x")
        await resp.head
        assert await resp.read() == b"ok"
        resp.release()
    assert len(seen) == 3  # the broken attempt and its retry on a new connection


async def test_a_body_delimited_by_the_connection_closing_is_read_whole(serve, pool):
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"part two")
        writer.close()

    url = await serve(close_delimited)
    resp = await pool.request("POST", url, b"", b"x")
    await resp.head
    assert await resp.read() == b"part one, part two"


async def test_a_stream_cut_mid_body_reports_the_break_after_the_bytes_it_got(serve, pool):
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.transport.abort()

    url = await serve(cut)
    resp = await pool.request("POST", url, b"", b"x")
    await resp.head
    got: list[bytes] = []
    ended: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
    resp.stream(lambda data: got.append(data), ended.set_result)
    error = await asyncio.wait_for(ended, 2)
    assert got == [b"hello"]
    assert isinstance(error, ConnectionBroken)


async def test_a_consumer_that_returns_a_future_holds_the_worker_back(serve, pool):
    async def fast_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(200):
            writer.write(b"%x\r\n%s\r\n" % (4096, bytes([65 + i % 26]) * 4096))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    url = await serve(fast_chunks)
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    got: list[bytes] = []
    resp = await pool.request("POST", url, b"", b"x")
    await resp.head
    ended: asyncio.Future[Exception | None] = loop.create_future()

    def on_data(data: bytes) -> asyncio.Future | None:
        got.append(data)
        return gate if not gate.done() else None

    resp.stream(on_data, ended.set_result)
    await asyncio.sleep(0.2)
    assert len(got) == 1  # nothing more was pushed while the consumer was busy
    gate.set_result(None)
    assert await asyncio.wait_for(ended, 5) is None
    assert b"".join(got) == b"".join(bytes([65 + i % 26]) * 4096 for i in range(200))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "http:///nohost"])
async def test_non_http_urls_are_refused(url, pool):
    with pytest.raises(ValueError):
        await pool.request("GET", url)


@pytest.mark.parametrize(("status", "pushed"), [(200, True), (503, False)])
async def test_a_consumer_set_before_the_head_gets_the_body_only_of_a_2xx_answer(serve, pool, status, pushed):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(0.05)  # the consumer is in place well before the head
        writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 4\r\n\r\nbody" % status)
        await writer.drain()

    url = await serve(answer)
    got: list[bytes] = []
    ended: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
    resp = await pool.request("POST", url, b"", b"x")
    resp.stream(got.append, ended.set_result)
    await resp.head
    assert resp.status == status
    if pushed:
        assert await asyncio.wait_for(ended, 2) is None
        assert got == [b"body"]
    else:
        assert await resp.read() == b"body" and got == []
        assert not ended.done()


async def test_a_request_its_caller_closed_is_not_retried(serve, pool):
    requests = 0

    async def count_and_stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            await _read_request(reader)
            requests += 1
            if requests == 1:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()

    url = await serve(count_and_stay_silent)
    first = await pool.request("POST", url, b"", b"x")
    await first.head
    assert await first.read() == b"ok"
    first.release()
    first.close()  # released: a no-op, the pooled connection stays usable

    sent: list = []
    pending = asyncio.ensure_future(pool.request("POST", url, b"", b"x", on_sent=sent.append))
    await asyncio.sleep(0.05)
    assert len(sent) == 1 and requests == 2  # the pooled connection was reused
    sent[0].close()  # a caller giving up, e.g. on a timeout
    with pytest.raises(ConnectionBroken):
        await asyncio.wait_for(pending, 2)
    await asyncio.sleep(0.05)
    assert requests == 2 and len(sent) == 1
