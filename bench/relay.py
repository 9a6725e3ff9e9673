"""Relay benchmark: the same streaming load sent direct to a simulated worker and through
the gateway, side by side, with the gateway's added latency and CPU cost per relayed chunk.

    python -m bench.relay                      # full run (about 7 minutes)
    python -m bench.relay --quick              # small numbers (under a minute)
    python -m bench.relay --streams 1,32 --skip-pd --json out.json
    pd-gateway bench ...                       # the same

Layout (2 cores): the gateway is a `pd-gateway serve --config FILE` subprocess pinned to
--gateway-cpu (0); the simulated workers (`python -m workers.sim` subprocesses) and this
process, the load generator, share --client-cpu (1).  The load generator is one uvloop
process speaking raw HTTP/1.1 over asyncio protocols with httptools, one keep-alive
connection per concurrent stream.

Per scenario (N concurrent streams, each sending `rounds` streaming /v1/completions
requests back to back, starts spread evenly over one request duration so requests
arrive at a steady rate):

* TTFT: from writing the request to the arrival of the first content SSE event.
* ITL: gaps between successive content events of a stream, as the client reads them
  (events that arrive in the same read count as 0 ms apart).
* gateway CPU-s per 1,000 chunks: the gateway process's utime+stime (/proc/PID/stat)
  over the measured phase, divided by the SSE events the client received through it.
* errors: non-200, missing [DONE], in-band error events, short streams, client timeouts,
  connection failures.

The PD scenario puts a simulated prefill and decode worker (nixl protocol) behind the
gateway and compares it with a direct call to the decode worker (which then prefills
locally), and with the same P-then-D protocol run by the client itself, which isolates
the gateway's own share of the PD overhead from the simulated KV pull.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
RELAY_MODEL = "sim-relay"
PD_MODEL = "sim-pd"
PROMPT = "The quick brown fox jumps over the lazy dog while the gateway relays every token"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets (printed next to the figures).
TTFT_ADDED_P50_MS = 0.5  # at 1 stream
CPU_PER_1K_S = 0.009  # at 32 streams
ITL_DIFF_MS = 0.1  # at 512 streams, with 0 errors
PD_FACTOR = 1.5  # PD figures vs the relay figures at the same stream count


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1,32,512",
                   help="comma list of concurrent stream counts (default: 1,32,512)")
    p.add_argument("--tokens", type=int, default=None,
                   help="max_tokens per request in the concurrent scenarios (default 128; --quick 32)")
    p.add_argument("--itl-ms", type=float, default=20.0, help="simulated inter-token latency (default 20)")
    p.add_argument("--rounds", type=int, default=None,
                   help="requests per stream, back to back (default: max(3, ceil(128/N)); --quick 1)")
    p.add_argument("--seq-requests", type=int, default=None,
                   help="sequential requests of the 1-stream scenario (default 200; --quick 30)")
    p.add_argument("--seq-tokens", type=int, default=16,
                   help="max_tokens of the 1-stream scenario (default 16)")
    p.add_argument("--quick", action="store_true", help="small numbers, for a fast look")
    p.add_argument("--skip-pd", action="store_true", help="skip the prefill/decode scenario")
    p.add_argument("--pd-streams", default="1,32",
                   help="stream counts of the PD scenario (default 1,32)")
    p.add_argument("--no-pd-client", action="store_true",
                   help="skip the client-run P->D baseline of the PD scenario")
    p.add_argument("--no-pipe", action="store_true",
                   help="skip the floor reference: the same load through a byte-pipe TCP proxy (bench.pipe)")
    p.add_argument("--gateway-cpu", type=int, default=0, help="core the gateway is pinned to (default 0)")
    p.add_argument("--client-cpu", type=int, default=1,
                   help="core of the sim workers and the load generator (default 1)")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="client timeout per request (default 10 s + 3x the stream's duration)")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.add_argument("--keep-logs", action="store_true", help="keep the gateway/sim logs directory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every request succeeded (targets are informational)."""
    settings = Settings.from_args(args)
    try:
        import uvloop

        report = uvloop.run(_bench(settings))
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        report = asyncio.run(_bench(settings))
    print(render(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["total_errors"] == 0 else 1


@dataclass
class Settings:
    streams: list[int]
    tokens: int
    itl_ms: float
    rounds: int | None
    seq_requests: int
    seq_tokens: int
    pd_streams: list[int]
    pd_client: bool
    pipe: bool
    gateway_cpu: int
    client_cpu: int
    timeout_s: float | None
    keep_logs: bool

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> Settings:
        return cls(
            streams=_int_list(a.streams),
            tokens=a.tokens or (32 if a.quick else 128),
            itl_ms=a.itl_ms,
            rounds=a.rounds or (1 if a.quick else None),
            seq_requests=a.seq_requests or (30 if a.quick else 200),
            seq_tokens=a.seq_tokens,
            pd_streams=[] if a.skip_pd else _int_list(a.pd_streams),
            pd_client=not a.no_pd_client,
            pipe=not a.no_pipe,
            gateway_cpu=a.gateway_cpu,
            client_cpu=a.client_cpu,
            timeout_s=a.timeout_s,
            keep_logs=a.keep_logs,
        )

    def shape(self, streams: int) -> tuple[int, int]:
        """(requests per stream, tokens per request) of a scenario."""
        if streams == 1:
            return self.seq_requests, self.seq_tokens
        return self.rounds or max(3, math.ceil(128 / streams)), self.tokens


def _int_list(text: str) -> list[int]:
    out = [int(x) for x in text.split(",") if x.strip()]
    if any(n < 1 for n in out):
        raise SystemExit(f"stream counts must be >= 1: {text!r}")
    return out


# --------------------------------------------------------------------------- processes


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _core_busy() -> dict[str, float]:
    """Busy seconds of every core so far, all processes (from /proc/stat)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *ticks = line.split()
                vals = [int(t) for t in ticks]
                idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                out[name] = (sum(vals[:8]) - idle) / CLK_TCK
    return out


def _self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _pin(cpu: int | None) -> Callable[[], None]:
    def pre() -> None:
        os.setpgrp()  # a Ctrl-C aimed at the bench does not reach the servers mid-measurement
        _die_with_parent()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        _raise_nofile()

    return pre


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the server gets SIGTERM if the bench dies without stopping it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, name: str, argv: list[str], cpu: int | None, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pin(cpu))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_s(self) -> float:
        return _cpu_seconds(self.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


async def _get_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        line = await reader.readline()
        await reader.read()
        return int(line.split()[1])
    finally:
        writer.close()


async def _wait_ready(proc: Proc, port: int, path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if await _get_status(port, path) == 200:
                return
        except (OSError, ValueError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready on {path} after {timeout_s:g}s:\n{proc.tail()}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- load generator


def http_post(port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class Rec:
    """One request's outcome, filled in by the connection's parser callbacks."""

    __slots__ = ("status", "t_send", "t_first", "t_last", "events", "content", "error_events",
                 "nl", "tail", "body", "collect", "error")

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

    def __init__(self, port: int, model: str, tokens: int, timeout_s: float,
                 prefill_port: int | None = None) -> None:
        self.port = port
        self.prefill_port = prefill_port
        self.timeout_s = timeout_s
        self.bodies = {warm: {"model": model, "prompt": PROMPT, "max_tokens": 2 if warm else tokens,
                              "stream": True} for warm in (False, True)}
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


async def run_phase(label: str, make_client: Callable[[], Client], streams: int, rounds: int,
                    tokens: int, itl_s: float, procs: dict[str, Proc]) -> Phase:
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
            rec = await client.request(phase.gaps)
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

    await asyncio.gather(*(stream(i) for i in range(streams)))
    phase.wall_s = loop.time() - t0
    phase.cpu_s = {name: p.cpu_s() - before[name] for name, p in procs.items()}
    phase.cpu_s["loadgen"] = _self_cpu_seconds() - self_before
    phase.core_s = {k: v - cores_before.get(k, 0.0) for k, v in _core_busy().items()}
    for c in clients:
        c.close()
    await asyncio.sleep(0.05)  # let the servers see the closes before the next phase
    return phase


# --------------------------------------------------------------------------- orchestration


def _gateway_yaml(port: int, relay_url: str, p_url: str | None, d_url: str | None, streams: int = 512) -> str:
    pools = [{"name": "relay", "kind": "replicas", "models": [RELAY_MODEL], "workers": [relay_url]}]
    if p_url and d_url:
        pools.append({"name": "pd", "kind": "pd", "protocol": "nixl", "models": [PD_MODEL],
                      "prefill": [p_url], "decode": [d_url]})
    # The admission limits are raised above the benchmark's concurrency: it measures the relay,
    # not the queue (a stream's next request can arrive before the gateway released the last).
    cap = max(4096, 4 * streams)
    config = {"listen": {"host": HOST, "port": port}, "log_level": "warning",
              "limits": {"max_inflight": cap, "max_inflight_per_worker": cap}, "pools": pools}
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


def _gateway_argv(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("pd-gateway")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    return head + ["serve", "--config", str(config)]


def _sim_argv(port: int, model: str, itl_ms: float, role: str = "both") -> list[str]:
    argv = [sys.executable, "-m", "workers.sim", "--host", HOST, "--port", str(port), "--model", model,
            "--itl-ms", f"{itl_ms:g}", "--ttft-ms", "0"]
    if role != "both":
        argv += ["--role", role, "--kv-protocol", "nixl"]
    return argv


def _cpus(s: Settings) -> tuple[int | None, int | None, str]:
    avail = sorted(os.sched_getaffinity(0))
    if s.gateway_cpu in avail and s.client_cpu in avail and s.gateway_cpu != s.client_cpu:
        return s.gateway_cpu, s.client_cpu, (
            f"gateway pinned to CPU {s.gateway_cpu}; sim workers + load generator pinned to CPU {s.client_cpu}")
    return None, None, f"NOT pinned (CPUs available: {avail}); figures are less reliable"


async def _bench(s: Settings) -> dict[str, Any]:
    gw_cpu, client_cpu, pinning = _cpus(s)
    code = _code_version()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    _raise_nofile()
    itl_s = s.itl_ms / 1000
    log_dir = Path(tempfile.mkdtemp(prefix="pd-gateway-bench-"))
    procs: list[Proc] = []
    started = time.monotonic()
    try:
        relay_port = _free_port()
        sim = Proc("sim-relay", _sim_argv(relay_port, RELAY_MODEL, s.itl_ms), client_cpu, log_dir)
        procs.append(sim)
        p_port = d_port = None
        if s.pd_streams:
            p_port, d_port = _free_port(), _free_port()
            procs.append(Proc("sim-prefill", _sim_argv(p_port, PD_MODEL, s.itl_ms, "prefill"), client_cpu, log_dir))
            procs.append(Proc("sim-decode", _sim_argv(d_port, PD_MODEL, s.itl_ms, "decode"), client_cpu, log_dir))
        for proc, port in zip(procs, [relay_port, p_port, d_port], strict=False):
            await _wait_ready(proc, port, "/health")
        gw_port = _free_port()
        config = log_dir / "gateway.yaml"
        url = lambda port: f"http://{HOST}:{port}"  # noqa: E731
        config.write_text(_gateway_yaml(gw_port, url(relay_port), p_port and url(p_port), d_port and url(d_port),
                                        max([1, *s.streams, *s.pd_streams])))
        gateway = Proc("gateway", _gateway_argv(config), gw_cpu, log_dir)
        procs.append(gateway)
        pipe = None
        pipe_port = _free_port()
        if s.pipe:
            pipe = Proc("pipe", [sys.executable, "-m", "bench.pipe", "--listen", str(pipe_port),
                                 "--upstream", str(relay_port)], gw_cpu, log_dir)
            procs.append(pipe)
            await _wait_ready(pipe, pipe_port, "/health")
        await _wait_ready(gateway, gw_port, "/ready")

        scenarios: list[dict[str, Any]] = []
        for n in s.streams:
            rounds, tokens = s.shape(n)
            timeout_s = s.timeout_s or 10 + 3 * tokens * itl_s
            watched = {"gateway": gateway, "sim": sim}
            if pipe is not None:
                watched["pipe"] = pipe
            targets = [("direct", relay_port), ("via", gw_port)] + ([("pipe", pipe_port)] if pipe else [])
            phases = {}
            for label, port in targets:
                make = functools.partial(Client, port, RELAY_MODEL, tokens, timeout_s)
                phases[label] = await run_phase(label, make, n, rounds, tokens, itl_s, watched)
            scenarios.append(_scenario("relay", n, rounds, tokens, phases))
            _progress(scenarios[-1], started)
        for n in s.pd_streams:
            assert p_port is not None and d_port is not None
            rounds, tokens = s.shape(n)
            timeout_s = s.timeout_s or 10 + 3 * tokens * itl_s
            watched = {"gateway": gateway, "sim": procs[2], "sim-prefill": procs[1]}
            targets = {"direct": (d_port, None), "via": (gw_port, None)}
            if s.pd_client:
                targets["client_pd"] = (d_port, p_port)
            phases = {}
            for label, (port, pport) in targets.items():
                make = functools.partial(Client, port, PD_MODEL, tokens, timeout_s, pport)
                phases[label] = await run_phase(label, make, n, rounds, tokens, itl_s, watched)
            scenarios.append(_scenario("pd", n, rounds, tokens, phases))
            _progress(scenarios[-1], started)
    except BaseException:
        for p in procs:
            p.stop()
        print(f"bench failed; logs in {log_dir}", file=sys.stderr)
        raise
    for p in procs:
        p.stop()
    failed = any(sc[k]["errors"] for sc in scenarios for k in ("direct", "via", "pipe", "client_pd") if k in sc)
    if s.keep_logs or failed:
        print(f"gateway and sim logs kept in {log_dir}", file=sys.stderr)
    else:
        for f in log_dir.iterdir():
            f.unlink()
        log_dir.rmdir()
    report = {
        "machine": dict(_machine(pinning, code), gateway_core=gw_cpu, client_core=client_cpu),
        "settings": {k: v for k, v in s.__dict__.items()},
        "scenarios": scenarios,
        "elapsed_s": time.monotonic() - started,
    }
    _judge(report)
    return report


def _scenario(kind: str, streams: int, rounds: int, tokens: int, phases: dict[str, Phase]) -> dict[str, Any]:
    out = {"kind": kind, "streams": streams, "rounds": rounds, "tokens": tokens,
           "requests": streams * rounds}
    out.update({label: ph.summary() for label, ph in phases.items()})
    d, v = out["direct"], out["via"]
    out["added_ttft_p50_ms"] = v["ttft_p50_ms"] - d["ttft_p50_ms"]
    out["added_ttft_p99_ms"] = v["ttft_p99_ms"] - d["ttft_p99_ms"]
    out["itl_p50_diff_ms"] = v["itl_p50_ms"] - d["itl_p50_ms"]
    chunks = v["chunks"]
    out["gateway_cpu_s_per_1k_chunks"] = v["cpu_s"]["gateway"] / chunks * 1000 if chunks else math.nan
    if "pipe" in out:
        pp = out["pipe"]
        out["pipe_added_ttft_p50_ms"] = pp["ttft_p50_ms"] - d["ttft_p50_ms"]
        out["pipe_added_ttft_p99_ms"] = pp["ttft_p99_ms"] - d["ttft_p99_ms"]
        out["pipe_itl_p50_diff_ms"] = pp["itl_p50_ms"] - d["itl_p50_ms"]
        out["pipe_itl_p99_diff_ms"] = pp["itl_p99_ms"] - d["itl_p99_ms"]
        out["pipe_cpu_s_per_1k_chunks"] = (pp["cpu_s"]["pipe"] / pp["chunks"] * 1000 if pp["chunks"]
                                           else math.nan)
    if "client_pd" in out:
        c = out["client_pd"]
        out["added_ttft_p50_vs_client_pd_ms"] = v["ttft_p50_ms"] - c["ttft_p50_ms"]
        out["added_ttft_p99_vs_client_pd_ms"] = v["ttft_p99_ms"] - c["ttft_p99_ms"]
    return out


def _progress(sc: dict[str, Any], started: float) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {sc['kind']} {sc['streams']} stream(s): "
          f"added TTFT p50 {sc['added_ttft_p50_ms']:+.3f} ms, gateway "
          f"{sc['gateway_cpu_s_per_1k_chunks']:.4f} CPU-s/1k chunks, errors "
          f"{sc['direct']['errors']}/{sc['via']['errors']}", file=sys.stderr, flush=True)


def _machine(pinning: str, code: str) -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import platform

    return {"cpus": os.cpu_count(), "cpu_model": model, "pinning": pinning,
            "python": platform.python_version(), "kernel": platform.release(), "code": code}


def _code_version() -> str:
    """The commit the gateway and workers ran from, and whether their files differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "workers"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head} (gateway/ or workers/ modified)" if dirty else head


def _judge(report: dict[str, Any]) -> None:
    """Attach the targets and their PASS/FAIL to the scenarios."""
    relay = {sc["streams"]: sc for sc in report["scenarios"] if sc["kind"] == "relay"}
    total = 0
    for sc in report["scenarios"]:
        total += sum(sc[k]["errors"] for k in ("direct", "via", "client_pd", "pipe") if k in sc)
        targets: dict[str, dict[str, Any]] = {}
        n = sc["streams"]
        if sc["kind"] == "relay":
            if n == 1:
                targets["added_ttft_p50_ms"] = _t(f"<= {TTFT_ADDED_P50_MS} ms",
                                                  sc["added_ttft_p50_ms"] <= TTFT_ADDED_P50_MS)
            if n == 32:
                targets["gateway_cpu_s_per_1k_chunks"] = _t(
                    f"<= {CPU_PER_1K_S}", sc["gateway_cpu_s_per_1k_chunks"] <= CPU_PER_1K_S)
            if n == 512:
                targets["errors"] = _t("0", sc["direct"]["errors"] + sc["via"]["errors"] == 0)
                targets["itl_p50_diff_ms"] = _t(f"|diff| <= {ITL_DIFF_MS} ms",
                                                abs(sc["itl_p50_diff_ms"]) <= ITL_DIFF_MS)
        elif n in relay:
            base = relay[n]
            lim_t = PD_FACTOR * base["added_ttft_p50_ms"]
            lim_c = PD_FACTOR * base["gateway_cpu_s_per_1k_chunks"]
            targets["added_ttft_p50_ms"] = _t(f"<= {PD_FACTOR}x relay ({lim_t:.3f})",
                                              sc["added_ttft_p50_ms"] <= lim_t)
            if "added_ttft_p50_vs_client_pd_ms" in sc:
                targets["added_ttft_p50_vs_client_pd_ms"] = _t(
                    f"<= {PD_FACTOR}x relay ({lim_t:.3f})", sc["added_ttft_p50_vs_client_pd_ms"] <= lim_t)
            targets["gateway_cpu_s_per_1k_chunks"] = _t(
                f"<= {PD_FACTOR}x relay ({lim_c:.4f})", sc["gateway_cpu_s_per_1k_chunks"] <= lim_c)
        sc["targets"] = targets
    report["total_errors"] = total


def _t(text: str, ok: bool) -> dict[str, Any]:
    return {"target": text, "pass": bool(ok)}


# --------------------------------------------------------------------------- table


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    st = report["settings"]
    out = [
        f"pd-gateway relay benchmark: {m['cpus']} CPUs ({m['cpu_model']}), {m['pinning']}",
        f"code: {m.get('code', 'unknown')}, captured when the servers started; python {m['python']}",
        f"simulated workers: itl {st['itl_ms']:g} ms, ttft 0 ms; /v1/completions stream=true; "
        f"elapsed {report['elapsed_s']:.0f}s",
        "VIA-DIRECT: what the gateway adds.  PIPE-DIRECT: what a byte-pipe TCP proxy (bench.pipe) adds "
        "on the same core: the machine's floor.",
        "",
    ]
    header = ("SCENARIO", "METRIC", "DIRECT", "VIA GW", "VIA-DIRECT", "PIPE-DIRECT", "TARGET", "RESULT")
    rows: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for sc in report["scenarios"]:
        rows += _rows(sc, notes, m)
        rows.append(("",) * len(header))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {2, 3, 4, 5}
    for r in rows[:-1]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    if notes:
        out += [""] + notes
    return "\n".join(out) + "\n"


def _f(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _rows(sc: dict[str, Any], notes: list[str], machine: dict[str, Any]) -> list[tuple[str, ...]]:
    d, v, t = sc["direct"], sc["via"], sc["targets"]
    n = sc["streams"]
    name = f"{sc['kind']} {n}x{sc['tokens']}tok"
    sub = f"({sc['requests']} req)"
    pd = sc["kind"] == "pd"
    pipe = sc.get

    def judged(key: str) -> tuple[str, str]:
        if key not in t:
            return "", ""
        return t[key]["target"], "PASS" if t[key]["pass"] else "FAIL"

    def share(ph: dict[str, Any], key: str) -> str:
        return _f(100 * ph["cpu_share"].get(key, 0), 1)

    rows = [
        (name, "TTFT p50 ms" + (" (vs direct to D)" if pd else ""), _f(d["ttft_p50_ms"]), _f(v["ttft_p50_ms"]),
         _f(sc["added_ttft_p50_ms"], sign=True), _f(pipe("pipe_added_ttft_p50_ms"), sign=True),
         *judged("added_ttft_p50_ms")),
        (sub, "TTFT p99 ms" + (" (vs direct to D)" if pd else ""), _f(d["ttft_p99_ms"]), _f(v["ttft_p99_ms"]),
         _f(sc["added_ttft_p99_ms"], sign=True), _f(pipe("pipe_added_ttft_p99_ms"), sign=True), "", ""),
    ]
    if "client_pd" in sc:
        c = sc["client_pd"]
        rows += [
            ("", "TTFT p50 ms (vs client-run P->D)", _f(c["ttft_p50_ms"]), _f(v["ttft_p50_ms"]),
             _f(sc["added_ttft_p50_vs_client_pd_ms"], sign=True), "", *judged("added_ttft_p50_vs_client_pd_ms")),
            ("", "TTFT p99 ms (vs client-run P->D)", _f(c["ttft_p99_ms"]), _f(v["ttft_p99_ms"]),
             _f(sc["added_ttft_p99_vs_client_pd_ms"], sign=True), "", "", ""),
        ]
    rows += [
        ("", "ITL p50 ms", _f(d["itl_p50_ms"]), _f(v["itl_p50_ms"]), _f(sc["itl_p50_diff_ms"], sign=True),
         _f(pipe("pipe_itl_p50_diff_ms"), sign=True), *judged("itl_p50_diff_ms")),
        ("", "ITL p99 ms", _f(d["itl_p99_ms"]), _f(v["itl_p99_ms"]), _f(v["itl_p99_ms"] - d["itl_p99_ms"], sign=True),
         _f(pipe("pipe_itl_p99_diff_ms"), sign=True), "", ""),
        ("", "gateway CPU-s / 1k chunks", "-", _f(sc["gateway_cpu_s_per_1k_chunks"], 4), "",
         _f(pipe("pipe_cpu_s_per_1k_chunks"), 4), *judged("gateway_cpu_s_per_1k_chunks")),
        ("", "chunks (SSE events received)", str(d["chunks"]), str(v["chunks"]), "",
         str(sc["pipe"]["chunks"]) if "pipe" in sc else "", "", ""),
        ("", "errors", str(d["errors"]), str(v["errors"]), "", str(sc["pipe"]["errors"]) if "pipe" in sc else "",
         *judged("errors")),
        ("", "gateway (or pipe) CPU % of its core", "-", share(v, "gateway"), "",
         share(sc["pipe"], "pipe") if "pipe" in sc else "", "", ""),
        ("", "sim worker(s) CPU % of a core", _f(100 * _sim_share(d), 1), _f(100 * _sim_share(v), 1), "",
         _f(100 * _sim_share(sc["pipe"]), 1) if "pipe" in sc else "", "", ""),
        ("", "load generator CPU % of a core", share(d, "loadgen"), share(v, "loadgen"), "",
         share(sc["pipe"], "loadgen") if "pipe" in sc else "", "", ""),
    ]
    gw_core, cl_core = machine.get("gateway_core"), machine.get("client_core")
    if gw_core is not None and cl_core is not None:
        for what, core in (("gateway", gw_core), ("client", cl_core)):
            key = f"cpu{core}"
            rows.append(("", f"CPU {core} ({what} core) busy %, all procs",
                         _f(100 * d["core_busy"].get(key, math.nan), 1),
                         _f(100 * v["core_busy"].get(key, math.nan), 1), "",
                         _f(100 * sc["pipe"]["core_busy"].get(key, math.nan), 1) if "pipe" in sc else "", "", ""))
    phases = [("direct", d), ("via", v), ("client-run P->D", sc.get("client_pd")), ("pipe", sc.get("pipe"))]
    for label, ph in phases:
        if not ph:
            continue
        if ph["errors"]:
            notes.append(f"* {name} {label}: {ph['errors']} errors {ph['error_kinds']}; first: {ph['first_error']}")
        ours = _sim_share(ph) + ph["cpu_share"].get("loadgen", 0)
        if ours > 0.85:
            notes.append(f"* {name} {label}: the sim worker(s) ({100 * _sim_share(ph):.0f}%) and the load generator "
                         f"({100 * ph['cpu_share'].get('loadgen', 0):.0f}%) filled the client core: these figures "
                         "are bounded by the client side")
        server = "pipe" if label == "pipe" else "gateway"
        if label in ("via", "pipe") and ph["cpu_share"].get(server, 0) > 0.9:
            notes.append(f"* {name} {label}: the {server} used {100 * ph['cpu_share'][server]:.0f}% of its core: "
                         "saturated at this load")
        if gw_core is not None and cl_core is not None and ph["wall_s"] >= 2:
            busy = ph["core_busy"]
            on_gw = ph["cpu_share"].get(server, 0) if label in ("via", "pipe") else 0.0
            other = {gw_core: busy.get(f"cpu{gw_core}", 0) - on_gw, cl_core: busy.get(f"cpu{cl_core}", 0) - ours}
            if max(other.values()) > 0.1:
                noisy = ", ".join(f"{100 * x:.0f}% of CPU {c}" for c, x in other.items())
                notes.append(f"* {name} {label}: other processes used {noisy} during the measurement: "
                             "the machine was not quiet")
    return rows


def _sim_share(ph: dict[str, Any]) -> float:
    return sum(v for k, v in ph["cpu_share"].items() if k.startswith("sim"))


if __name__ == "__main__":
    sys.exit(main())
