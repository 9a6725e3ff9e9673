"""Drive the load: a closed loop of N streams or Poisson arrivals at R req/s, round-robin over URLs."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp

from .client import Record, stream_request
from .progress import Progress, Snapshot
from .workloads import Api, Request, request_body


@dataclass
class LoadSpec:
    urls: list[str]  # full endpoint URLs, e.g. http://host:8000/v1/chat/completions
    model: str
    api: Api = "chat"
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int | None = 10  # closed loop: streams; rate mode: cap on requests in flight (None: none)
    rate: float | None = None  # Poisson arrivals per second; None: closed loop
    max_requests: int | None = 10  # None: until the duration ends
    duration_s: float | None = 90.0  # stop starting requests after this; in-flight ones finish
    request_timeout_s: float = 180.0
    warmup: int = 0  # requests sent (at the same concurrency) before measuring; not recorded
    extra: dict[str, Any] = field(default_factory=dict)
    ignore_eos: bool = True
    seed: int = 0
    show_errors: int = 5


@dataclass
class RunResult:
    records: list[Record]
    t0: float
    t1: float
    t0_unix: float = 0.0  # wall clock at t0, so rows can be lined up with other tools' logs

    @property
    def wall_s(self) -> float:
        return self.t1 - self.t0


def describe_failure(rec: Record) -> str:
    return f"loadtest: request failed ({rec.url}): {rec.error_code}: {rec.error_msg[:500]}"


def snapshot(records: list[Record], total: int | None, t0: float) -> Snapshot:
    """Progress so far: requests done and failed, token events per second since t0, median TTFT."""
    ok = [r for r in records if r.ok]
    ttfts = [r.token_times[0] - r.start for r in ok]
    events = sum(len(r.token_times) for r in ok)
    elapsed = max(time.monotonic() - t0, 1e-9)
    return Snapshot(
        done=len(ok),
        errors=len(records) - len(ok),
        total=total,
        tokens_per_s=events / elapsed,
        ttft_p50_s=statistics.median(ttfts) if ttfts else None,
    )


class _Run:
    """Shared state of one phase: what to send next, where, and what came back."""

    def __init__(
        self,
        spec: LoadSpec,
        requests: Iterator[Request],
        limit: int | None,
        duration_s: float | None,
        errors: TextIO,
        on_record: Callable[[Record], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.spec = spec
        self._requests = requests
        self._urls = itertools.cycle(spec.urls)
        self._limit = limit
        self._deadline = time.monotonic() + duration_s if duration_s else None
        self._errors = errors
        self._on_record = on_record
        self._stop = stop
        self.started = 0
        self.stopped = False
        self.records: list[Record] = []
        self.error_count = 0

    def next_request(self) -> tuple[str, Request] | None:
        if self.stopped or (self._stop is not None and self._stop()):
            return None
        if self._limit is not None and self.started >= self._limit:
            return None
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return None
        self.started += 1
        return next(self._urls), next(self._requests)

    async def send(self, session: aiohttp.ClientSession, url: str, req: Request) -> None:
        rec = await self._stream(session, url, req)
        if rec.error_code == 400 and self.spec.ignore_eos and "ignore_eos" in rec.error_msg:
            self.spec.ignore_eos = False  # the server does not take vLLM's extension: go on without it
            print("loadtest: the server rejects ignore_eos; sending requests without it", file=self._errors)
            rec = await self._stream(session, url, req)
        self.records.append(rec)
        if self._on_record is not None:
            self._on_record(rec)
        if not rec.ok:
            self.error_count += 1
            if self.error_count <= self.spec.show_errors:
                print(describe_failure(rec), file=self._errors, flush=True)

    async def _stream(self, session: aiohttp.ClientSession, url: str, req: Request) -> Record:
        body = request_body(req, self.spec.model, self.spec.api, self.spec.extra, self.spec.ignore_eos)
        return await stream_request(
            session, url, self.spec.headers, body, req.input_tokens, self.spec.request_timeout_s
        )

    def snapshot(self, t0: float) -> Snapshot:
        return snapshot(self.records, self._limit, t0)


async def _closed_loop(run: _Run, session: aiohttp.ClientSession, streams: int) -> None:
    async def stream() -> None:
        while (item := run.next_request()) is not None:
            await run.send(session, *item)

    await asyncio.gather(*(stream() for _ in range(streams)))


def poisson_gaps(rate: float, seed: int) -> Iterator[float]:
    """Seconds between arrivals of a Poisson process of `rate` per second (exponential gaps)."""
    rng = random.Random(seed)
    while True:
        yield rng.expovariate(rate)


async def _poisson(run: _Run, session: aiohttp.ClientSession, rate: float, cap: int | None, seed: int) -> None:
    gaps = poisson_gaps(rate, seed)
    slots = asyncio.Semaphore(cap) if cap else None
    tasks: set[asyncio.Task[None]] = set()

    async def one(url: str, req: Request) -> None:
        try:
            await run.send(session, url, req)
        finally:
            if slots:
                slots.release()

    next_at = time.monotonic()
    while (item := run.next_request()) is not None:
        if slots:
            await slots.acquire()
        task = asyncio.create_task(one(*item))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += next(gaps)
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*tasks)


async def _phase(spec: LoadSpec, session: aiohttp.ClientSession, run: _Run) -> None:
    if spec.rate:
        await _poisson(run, session, spec.rate, spec.concurrency, spec.seed)
    else:
        await _closed_loop(run, session, spec.concurrency or 1)


async def _tick(run: _Run, t0: float, progress: Progress, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        progress.update(run.snapshot(t0))


def _stop_on_interrupt(run: _Run, err: TextIO) -> Callable[[], None]:
    """Ctrl-C (SIGINT) ends the run as the duration limit does: in-flight requests finish, results are kept.
    Only where the loop may own the signal (the main thread)."""

    def stop() -> None:
        run.stopped = True
        print("loadtest: interrupted: no new requests; waiting for those in flight", file=err, flush=True)

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop)
    except (ValueError, RuntimeError, NotImplementedError):
        return lambda: None

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGINT)

    return restore


async def run_load(
    spec: LoadSpec,
    requests: Iterator[Request],
    progress: Progress | None = None,
    errors: TextIO | None = None,
    tick_s: float = 0.5,
    on_measure: Callable[[], None] | None = None,
    on_record: Callable[[Record], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Warm up (unrecorded), then run the measured phase; never raises for a failed request.
    `on_record` sees each measured record as it completes; `stop`, when given, is asked before every
    request starts and replaces the Ctrl-C handler (a worker process of `--processes` is stopped by its parent)."""
    err = errors or sys.stderr
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        if spec.warmup:
            await _phase(spec, session, _Run(spec, requests, spec.warmup, None, err))
        if on_measure:
            on_measure()
        run = _Run(spec, requests, spec.max_requests, spec.duration_s, err, on_record, stop)
        restore = _stop_on_interrupt(run, err) if stop is None else (lambda: None)
        t0, t0_unix = time.monotonic(), time.time()
        ticker = asyncio.create_task(_tick(run, t0, progress, tick_s)) if progress else None
        try:
            await _phase(spec, session, run)
        finally:
            restore()
            if ticker:
                ticker.cancel()
        t1 = time.monotonic()
        if progress:
            progress.close(run.snapshot(t0))
    return RunResult(run.records, t0, t1, t0_unix)
