"""Every resource a request takes has an owner, a bound and a deadline: the front door's
connections and buffered bodies, the slots a stream to a slow client holds, the bytes of one
SSE event. Each test drives the gateway over real sockets and checks the release."""

from __future__ import annotations

import asyncio
import json
import random
import socket

import httpx
import pytest

from gateway import sse
from tests.conftest import sse_payloads, wait_until
from tests.sse_worker import DONE, Script, SseWorker, endless, finite, giant

COMPLETION = {"model": "sim-model", "prompt": "hi", "max_tokens": 3}
FLOOD = {"model": "flood", "prompt": "hi", "max_tokens": 100000, "stream": True}


@pytest.fixture
async def sse_worker():  # noqa: ANN201
    started: list[SseWorker] = []

    async def start(script: Script, json_bytes: int = 0) -> SseWorker:
        worker = await SseWorker(script, json_bytes).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.close()


def _head(length: int, extra: bytes = b"") -> bytes:
    return b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n" % (extra, length)


def _request(body: dict, extra: bytes = b"") -> bytes:
    raw = json.dumps(body).encode()
    return _head(len(raw), extra) + raw


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and everything until the gateway closes the connection."""
    data = await asyncio.wait_for(reader.read(-1), 5)
    return int(data.split(b" ", 2)[1]), data


async def _chunked(*parts: bytes):  # noqa: ANN202 (an async generator: httpx sends it chunked)
    for part in parts:
        yield part


def _non_reader(port: int, request: bytes) -> socket.socket:
    """A client that sends `request` and never reads a byte (a small receive buffer fills fast)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


async def _flood_gateway(gateway, sim, sse_worker, **sections: object):
    """A gateway with a pool whose worker streams 1 KB events without end ("flood") and a
    simulated one for ordinary requests."""
    flood = await sse_worker(endless)
    a = await sim()
    pools = [{"name": "flood", "workers": [flood.url], "models": ["flood"]}, {"name": "dp", "workers": [a.url]}]
    return flood, a, await gateway(pools, **sections)


async def test_a_keyless_client_is_refused_at_its_head_before_any_body_is_read(sim, gateway, client):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], auth={"api_keys": ["k"]})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(_head(16 * 1024 * 1024 - 1) + b"{")  # announces 16 MiB, sends one byte of it
    status, answer = await _answer(reader)  # answered after the head, the connection closed
    writer.close()
    assert status == 401 and json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_api_key"
    assert gw.gateway.front.body_bytes == 0
    # Too large is refused at the head too, with or without a key.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(_head(16 * 1024 * 1024 + 1, b"authorization: Bearer k\r\n"))
    status, _ = await _answer(reader)
    writer.close()
    assert status == 413
    for bad in (b"abc", b"-1", b"5\r\ncontent-length: 7000000"):  # refused by the parser, in the envelope
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %s\r\n\r\n{" % bad)
        status, answer = await _answer(reader)
        writer.close()
        assert status == 400 and json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_http"
    # The ASGI path (a chunked body) checks the key before it reads the body.
    refused = await client.post(f"{gw.url}/v1/completions", content=_chunked(*[b"x" * 65536] * 64))
    assert refused.status_code == 401
    ok = await client.post(f"{gw.url}/v1/completions", json=COMPLETION, headers={"authorization": "Bearer k"})
    assert ok.status_code == 200
    assert gw.gateway.front.body_bytes == 0


async def test_connections_beyond_the_cap_get_a_503_and_are_closed(sim, gateway):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"max_connections": 2})
    idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(2)]
    await wait_until(lambda: gw.gateway.front.connections == 2)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    status, answer = await _answer(reader)
    writer.close()
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert status == 503 and error["code"] == "too_many_connections", answer
    assert b"retry-after: 1" in answer.lower()
    idle.pop().close()
    await wait_until(lambda: gw.gateway.front.connections == 1)
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.post(f"{gw.url}/v1/completions", json=COMPLETION)).status_code == 200
    for s in idle:
        s.close()
    await wait_until(lambda: gw.gateway.front.connections == 0)


async def test_request_bodies_held_beyond_the_budget_get_a_503(sim, gateway):
    a = await sim()
    gw = await gateway([{"name": "dp", "workers": [a.url]}], limits={"max_buffered_body_bytes": 4096})
    front = gw.gateway.front
    parked = []
    for _ in range(2):  # two bodies of 2040 bytes announced, one byte of each sent
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(_head(2040) + b"{")
        parked.append(s)
    await wait_until(lambda: front.body_bytes == 4080)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(_request(COMPLETION))
    status, answer = await _answer(reader)
    writer.close()
    assert status == 503 and b"too_many_body_bytes" in answer, answer
    parked.pop().close()  # a body that never arrives is given back with its connection
    await wait_until(lambda: front.body_bytes == 2040)
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.post(f"{gw.url}/v1/completions", json=COMPLETION)).status_code == 200
        chunked = _chunked(json.dumps(COMPLETION).encode())  # the ASGI path counts its bodies too
        assert (await c.post(f"{gw.url}/v1/completions", content=chunked)).status_code == 200
    assert front.body_bytes == 2040
    parked.pop().close()
    await wait_until(lambda: front.body_bytes == 0)


def _chunked_request(body: dict) -> bytes:
    """A request whose body is chunked: it takes uvicorn's own (ASGI) path."""
    raw = json.dumps(body).encode()
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw)


@pytest.mark.parametrize(
    ("timeouts", "request_of"),
    [({"client_write_s": 0.5}, _request), ({"total_s": 1.0}, _request), ({"client_write_s": 0.5}, _chunked_request)],
    ids=["client_write_s", "total_s", "asgi_path"],
)
async def test_clients_that_never_read_a_stream_give_back_their_slots(sim, gateway, sse_worker, timeouts, request_of):
    flood, a, gw = await _flood_gateway(
        gateway,
        sim,
        sse_worker,
        limits={"max_inflight": 4, "queue": 0},
        timeouts=timeouts,
        outlier={"consecutive_failures": 1},
    )
    admission = gw.gateway.admission
    stuck = [_non_reader(gw.port, request_of(FLOOD)) for _ in range(4)]
    await wait_until(lambda: admission.inflight == 4)
    await wait_until(lambda: admission.inflight == 0 and flood.streaming == 0, timeout_s=10)
    assert flood.ended == 4  # the worker saw each stream cancelled
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.post(f"{gw.url}/v1/completions", json=COMPLETION)).status_code == 200
    assert gw.gateway.telemetry.outcomes["client_timeout"] == 4
    await wait_until(lambda: gw.gateway.front.connections == 0)  # dropped, though their clients hold on
    (ep,) = gw.gateway.pools[0].endpoints
    assert ep.errors == 0 and ep.ejections == 0 and ep.healthy  # the client's fault, not the worker's
    for s in stuck:
        s.close()


async def test_a_client_that_never_reads_a_whole_answer_loses_its_connection_after_keep_alive(gateway, sse_worker):
    worker = await sse_worker(endless, json_bytes=16 * 1024 * 1024)
    gw = await gateway(
        [{"name": "big", "workers": [worker.url], "models": ["flood"]}], timeouts={"client_write_s": 0.5}
    )
    connections = gw.server.server_state.connections
    stuck = _non_reader(gw.port, _request({**FLOOD, "stream": False}))
    await wait_until(lambda: gw.gateway.telemetry.outcomes["success"] == 1, timeout_s=10)  # answered, not read
    assert len(connections) == 1
    # The keep-alive timeout closes it; the answer never drains, so it is dropped client_write_s later.
    await wait_until(lambda: not connections, timeout_s=15)
    stuck.close()


async def test_a_client_that_pauses_reading_does_not_get_its_worker_blamed(gateway, sse_worker):
    worker = await sse_worker(finite(4 * 1024 * 1024))
    gw = await gateway(
        [{"name": "flood", "workers": [worker.url], "models": ["flood"]}],
        timeouts={"between_chunks_s": 0.2},
        outlier={"consecutive_failures": 1},
    )
    paused = _non_reader(gw.port, _request(FLOOD))
    connections = gw.server.server_state.connections
    await wait_until(lambda: any(c.flow is not None and c.flow.write_paused for c in connections), timeout_s=10)
    await asyncio.sleep(1.0)  # the client's pause: five times between_chunks_s

    def read_all() -> bytes:
        paused.settimeout(10)
        parts = []
        while part := paused.recv(1 << 20):
            parts.append(part)
            if b"".join(parts[-2:]).endswith(b"0\r\n\r\n"):
                break
        return b"".join(parts)

    answer = await asyncio.to_thread(read_all)
    paused.close()
    assert b"error" not in answer[-2000:] and DONE in answer[-100:], answer[-300:]
    (ep,) = gw.gateway.pools[0].endpoints
    assert ep.errors == 0 and ep.ejections == 0 and ep.healthy
    assert gw.gateway.telemetry.outcomes["success"] == 1


async def test_a_giant_sse_event_ends_its_request_with_a_clear_error_and_others_stream_on(
    sim, gateway, client, sse_worker
):
    worker = await sse_worker(giant(20 * 1024 * 1024))
    a = await sim(itl_ms=5)
    gw = await gateway(
        [{"name": "giant", "workers": [worker.url], "models": ["flood"]}, {"name": "dp", "workers": [a.url]}],
        outlier={"consecutive_failures": 1},
    )
    other = asyncio.create_task(
        client.post(f"{gw.url}/v1/completions", json={**COMPLETION, "max_tokens": 50, "stream": True})
    )
    resp = await client.post(f"{gw.url}/v1/completions", json=FLOOD)
    assert resp.status_code == 502, resp.text[:300]
    error = resp.json()["error"]
    assert error["code"] == "event_too_large" and str(8 * 1024 * 1024) in error["message"], error
    streamed = await other
    assert streamed.status_code == 200 and len(sse_payloads(streamed.content)) == 50 + 1
    (ep,) = gw.gateway.pools[0].endpoints
    assert ep.errors == 0 and ep.ejections == 0  # what the client asked for does not fit: no fault of the worker
    await wait_until(lambda: worker.streaming == 0)  # its stream was cut off


def test_the_event_framer_finds_events_split_anywhere_and_bounds_an_unfinished_one():
    rng = random.Random(7)
    events = [b"data: " + bytes(rng.choice(b"ab\n") for _ in range(rng.randrange(40))) for _ in range(300)]
    stream = b"".join(e.replace(b"\n\n", b"\n").rstrip(b"\n") + b"\n\n" for e in events)
    framer, out, i = sse.EventFramer(limit=1024), [], 0
    while i < len(stream):
        n = rng.randrange(1, 9)
        out.append(framer.feed(stream[i : i + n]))
        i += n
    assert b"".join(out) == stream
    with pytest.raises(sse.EventTooLarge):
        for _ in range(10):
            framer.feed(b"data: " + b"x" * 200)


@pytest.mark.parametrize("protocol", ["nixl", "neuron-legacy"])
async def test_non_reading_clients_of_a_pd_pool_give_back_their_slots_and_cancel_both_legs(sim, gateway, protocol):
    long = {"itl_ms": 0, "max_model_len": 2_000_000}
    p = await sim(role="prefill", kv_protocol=protocol, **long)
    d = await sim(role="decode", kv_protocol=protocol, kv_peers=[p.url], **long)
    gw = await gateway(
        [
            {
                "name": "pd",
                "kind": "pd",
                "protocol": protocol,
                "prefill": [p.url],
                "decode": [d.url],
                "disaggregate_min_tokens": 0,
            }
        ],
        limits={"max_inflight": 2, "queue": 0},
        timeouts={"client_write_s": 0.5},
        outlier={"consecutive_failures": 1},
    )
    admission = gw.gateway.admission
    request = {**COMPLETION, "max_tokens": 1_000_000, "stream": True}
    stuck = [_non_reader(gw.port, _request(request)) for _ in range(2)]
    await wait_until(lambda: admission.inflight == 2)
    await wait_until(lambda: admission.inflight == 0, timeout_s=10)
    await wait_until(lambda: d.stats.in_flight == 0 and p.stats.in_flight == 0)
    assert gw.gateway.telemetry.outcomes["client_timeout"] == 2
    for ep in gw.gateway.pools[0].endpoints:
        assert ep.errors == 0 and ep.ejections == 0 and ep.healthy, ep.url
    async with httpx.AsyncClient(timeout=10) as c:
        resp = await c.post(f"{gw.url}/v1/completions", json={**COMPLETION, "stream": True})
    assert resp.status_code == 200 and sse_payloads(resp.content)[-1] == "[DONE]"
    for s in stuck:
        s.close()
