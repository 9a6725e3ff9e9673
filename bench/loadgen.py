"""The load generator of the relay benchmark: raw HTTP/1.1 over asyncio protocols with httptools,
one keep-alive connection per concurrent stream, timing TTFT and inter-token gaps per SSE event,
and `run_phase`, which runs one measured phase (N streams x rounds requests)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from .procs import HOST, Proc, _core_busy, _self_cpu_seconds

PROMPT = "The quick brown fox jumps over the lazy dog while the gateway relays every token"


def http_post(port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class Rec:
    """One request's outcome, filled in by the connection's parser callbacks."""

    __slots__ = (
        "status",
        "t_send",
        "t_first",
        "t_last",
        "events",
        "content",
        "error_events",
        "nl",
        "tail",
        "body",
        "collect",
        "error",
    )

    def __init__(self, collect: bool = False) -> None:
        self.status = 0
        self.t_send = self.t_first = self.t_last = 0.0
        self.events = self.content = self.error_events = 0
        self.nl = False
        self.tail = b""
        self.body: list[bytes] = []
        self.collect = collect  # keep the body (non-streaming answers)
        self.error: str | None = None


class Conn(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection, one request at a time."""

    def __init__(self) -> None:
        self.gaps = array("d")  # the phase's inter-token gaps (seconds), set per request
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.rec = Rec()
        self.fut: asyncio.Future[None] | None = None
        self.reusable = True

    @classmethod
    async def open(cls, port: int) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, HOST, port)
        return conn

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._end("connection lost" + (f": {exc}" if exc else ""))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._end(f"bad HTTP response: {err}")
            self.close()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.rec.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        rec = self.rec
        if rec.collect or rec.status != 200:
            rec.body.append(body)
            return
        n = body.count(b"\n\n")
        if rec.nl and body[:1] == b"\n":
            n += 1  # an event separator split across two reads
        rec.nl = body[-1:] == b"\n"
        rec.tail = body[-16:] if len(body) >= 16 else (rec.tail + body)[-16:]
        if not n:
            return
        rec.events += n
        content = n
        if b"[DONE]" in body:
            content -= 1
        if b'{"error"' in body:
            rec.error_events += 1
            content -= 1
        if content <= 0:
            return
        rec.content += content
        if rec.t_first == 0.0:
            rec.t_first = now
            content -= 1
        else:
            self.gaps.append(now - rec.t_last)
            content -= 1
        for _ in range(content):
            self.gaps.append(0.0)
        rec.t_last = now

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.reusable = False
        self._end(None)

    def _end(self, error: str | None) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            self.rec.error = error
            fut.set_result(None)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    async def request(self, raw: bytes, rec: Rec, timeout_s: float, gaps: array) -> Rec:
        loop = asyncio.get_running_loop()
        self.rec = rec
        self.gaps = gaps
        self.fut = fut = loop.create_future()
        handle = loop.call_later(timeout_s, self._end, "client timeout")
        rec.t_send = time.perf_counter()
        assert self.transport is not None
        self.transport.write(raw)
        try:
            await fut
        finally:
            handle.cancel()
            self.fut = None
        if rec.error is not None:
            self.close()
        return rec


def classify(rec: Rec, tokens: int | None) -> str | None:
    """The error kind of a finished streaming request, or None when it is fine."""
    if rec.error is not None:
        return "timeout" if rec.error == "client timeout" else "connection"
    if rec.status != 200:
        return f"http {rec.status}"
    if rec.error_events:
        return "error event"
    if not rec.tail.endswith(b"data: [DONE]\n\n"):
        return "no [DONE]"
    if tokens is not None and rec.content != tokens:
        return "short stream"
    return None


class Client:
    """One stream's connection(s) and requests: a plain streaming POST, or (prefill_port
    set) the nixl P->D protocol run by the client itself, the PD baseline."""

    def __init__(self, port: int, model: str, tokens: int, timeout_s: float, prefill_port: int | None = None) -> None:
        self.port = port
        self.prefill_port = prefill_port
        self.timeout_s = timeout_s
        self.bodies = {
            warm: {"model": model, "prompt": PROMPT, "max_tokens": 2 if warm else tokens, "stream": True}
            for warm in (False, True)
        }
        self.raws = {warm: http_post(port, "/v1/completions", _dumps(b)) for warm, b in self.bodies.items()}
        self.conn: Conn | None = None
        self.pconn: Conn | None = None

    async def connect(self) -> None:
        if self.conn is None or not self.conn.reusable:
            self.conn = await Conn.open(self.port)
        if self.prefill_port is not None and (self.pconn is None or not self.pconn.reusable):
            self.pconn = await Conn.open(self.prefill_port)

    async def request(self, gaps: array, warm: bool = False) -> Rec:
        rec = Rec()
        try:
            await self.connect()
        except OSError as err:
            rec.error = f"connect: {err}"
            return rec
        assert self.conn is not None
        if self.prefill_port is None:
            return await self.conn.request(self.raws[warm], rec, self.timeout_s, gaps)
        return await self._pd(rec, gaps, self.bodies[warm])

    async def _pd(self, rec: Rec, gaps: array, body: dict) -> Rec:
        """What the gateway's nixl protocol does, done by the client."""
        assert self.pconn is not None and self.conn is not None and self.prefill_port is not None
        p_body = dict(body, max_tokens=1, stream=False, kv_transfer_params={"do_remote_decode": True})
        raw = http_post(self.prefill_port, "/v1/completions", _dumps(p_body))
        prefill = await self.pconn.request(raw, Rec(collect=True), self.timeout_s, gaps)
        t_send = prefill.t_send
        if prefill.error is not None or prefill.status != 200:
            rec.error, rec.status, rec.body = prefill.error, prefill.status, prefill.body
            return rec
        kv = json.loads(b"".join(prefill.body))["kv_transfer_params"]
        raw = http_post(self.port, "/v1/completions", _dumps(dict(body, kv_transfer_params=kv)))
        await self.conn.request(raw, rec, self.timeout_s, gaps)
        rec.t_send = t_send
        return rec

    def close(self) -> None:
        for c in (self.conn, self.pconn):
            if c is not None:
                c.close()


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Phase:
    label: str
    streams: int
    requests: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    ttft: list[float] = field(default_factory=list)
    gaps: array = field(default_factory=lambda: array("d"))
    events: int = 0
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    first_error: str | None = None
    core_s: dict[str, float] = field(default_factory=dict)  # busy seconds per core, all processes

    def merge(self, other: Phase) -> Phase:
        """This phase and a later slice of the same target's load, as one."""
        self.requests += other.requests
        self.ok += other.ok
        self.errors.update(other.errors)
        self.ttft += other.ttft
        self.gaps.extend(other.gaps)
        self.events += other.events
        self.wall_s += other.wall_s
        for mine, theirs in ((self.cpu_s, other.cpu_s), (self.core_s, other.core_s)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0.0) + v
        self.first_error = self.first_error or other.first_error
        return self

    def summary(self) -> dict[str, Any]:
        ttft = sorted(self.ttft)
        gaps = sorted(self.gaps)
        return {
            "label": self.label,
            "streams": self.streams,
            "requests": self.requests,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "first_error": self.first_error,
            "ttft_p50_ms": _pct(ttft, 50) * 1e3,
            "ttft_p99_ms": _pct(ttft, 99) * 1e3,
            "itl_p50_ms": _pct(gaps, 50) * 1e3,
            "itl_p99_ms": _pct(gaps, 99) * 1e3,
            "itl_samples": len(gaps),
            "chunks": self.events,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "cpu_share": {k: v / self.wall_s for k, v in self.cpu_s.items()} if self.wall_s else {},
            "core_busy": {k: v / self.wall_s for k, v in self.core_s.items()} if self.wall_s else {},
        }


def _pct(data: list[float], q: float) -> float:
    if not data:
        return math.nan
    k = (len(data) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def _record(phase: Phase, rec: Rec, tokens: int) -> None:
    phase.requests += 1
    phase.events += rec.events
    kind = classify(rec, tokens)
    if kind is None:
        phase.ok += 1
        phase.ttft.append(rec.t_first - rec.t_send)
    else:
        phase.errors[kind] += 1
        if phase.first_error is None:
            detail = rec.error or b"".join(rec.body)[:300].decode(errors="replace")
            phase.first_error = f"{kind}: {detail}"


async def run_interleaved(
    makers: dict[str, Callable[[], Client]], rounds: int, tokens: int, procs: dict[str, Proc]
) -> dict[str, Phase]:
    """One stream, the targets taking turns request by request, so that a slow spell of the
    machine lands on all of them alike. The order of the turns cycles through every
    permutation: a target that shares a core with the one before it finds that core's caches
    warm (measured here: 60-70 us of TTFT either way), so no target may always follow the
    same one. Each phase's CPU and wall time are summed over its own requests only."""
    clients = {label: make() for label, make in makers.items()}
    phases = {label: Phase(label, 1) for label in clients}
    scratch = array("d")
    for label, client in clients.items():
        await client.connect()
        if classify(await client.request(scratch, warm=True), 2):
            raise RuntimeError(f"{label}: the warm-up request failed")
    loop = asyncio.get_running_loop()
    orders = itertools.cycle(itertools.permutations(clients.items()))
    for _ in range(rounds):
        for label, client in next(orders):
            phase = phases[label]
            before = {name: p.cpu_s() for name, p in procs.items()}
            self_before, cores_before, t0 = _self_cpu_seconds(), _core_busy(), loop.time()
            rec = await client.request(phase.gaps)
            phase.wall_s += loop.time() - t0
            for name, p in procs.items():
                phase.cpu_s[name] = phase.cpu_s.get(name, 0.0) + p.cpu_s() - before[name]
            phase.cpu_s["loadgen"] = phase.cpu_s.get("loadgen", 0.0) + _self_cpu_seconds() - self_before
            for k, v in _core_busy().items():
                phase.core_s[k] = phase.core_s.get(k, 0.0) + v - cores_before.get(k, 0.0)
            _record(phase, rec, tokens)
    for c in clients.values():
        c.close()
    await asyncio.sleep(0.05)
    return phases


async def run_phase(
    label: str,
    make_client: Callable[[], Client],
    streams: int,
    rounds: int,
    tokens: int,
    itl_s: float,
    procs: dict[str, Proc],
) -> Phase:
    """Open N connections, warm them (and the gateway's upstream pool) with one short
    request each, then run N streams x `rounds` requests, the starts spread over one
    request duration, and measure."""
    phase = Phase(label, streams)
    clients = [make_client() for _ in range(streams)]
    await asyncio.gather(*(c.connect() for c in clients))
    scratch = array("d")
    warm = await asyncio.gather(*(c.request(scratch, warm=True) for c in clients))
    bad = Counter(k for k in (classify(r, 2) for r in warm) if k)
    if bad:
        raise RuntimeError(f"{label}: warm-up requests failed: {dict(bad)}")
    await asyncio.sleep(0.05)

    spread = tokens * itl_s if streams > 1 else 0.0
    loop = asyncio.get_running_loop()
    before = {name: p.cpu_s() for name, p in procs.items()}
    self_before = _self_cpu_seconds()
    cores_before = _core_busy()
    t0 = loop.time()

    async def stream(i: int) -> None:
        client = clients[i]
        delay = t0 + spread * i / streams - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for _ in range(rounds):
            _record(phase, await client.request(phase.gaps), tokens)

    await asyncio.gather(*(stream(i) for i in range(streams)))
    phase.wall_s = loop.time() - t0
    phase.cpu_s = {name: p.cpu_s() - before[name] for name, p in procs.items()}
    phase.cpu_s["loadgen"] = _self_cpu_seconds() - self_before
    phase.core_s = {k: v - cores_before.get(k, 0.0) for k, v in _core_busy().items()}
    for c in clients:
        c.close()
    await asyncio.sleep(0.05)  # let the servers see the closes before the next phase
    return phase
