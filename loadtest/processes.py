"""`--processes N`: one load spread over N worker processes (spawn), merged back into one run.

Why: one asyncio process that is starved of CPU reads its streams' events late, so its TTFT and e2e grow
with the streams it holds (docs/loadtest.md, "process layout"); llmperf runs one process per stream.

How the load is shared: child k of N runs the same spec with the closed-loop streams (or, with --rate, the
arrival rate and the in-flight cap) split evenly, `max_requests` and `warmup` split so they add up exactly,
and request i of the single-process request stream sent by the child i mod N, so the bodies are the same
overall; the URL round-robin is kept the same way. Poisson seeds differ per child (independent Poisson
arrivals at R/N each add up to Poisson arrivals at R). The children warm up, then wait until all are ready
and start measuring together. Each measured record goes to the parent as it completes; the parent feeds
one progress display, prints the first failures once, and on Ctrl-C tells every child to start no more
requests (those in flight finish and are kept). Record times are time.monotonic(), CLOCK_MONOTONIC on
Linux: one clock for every process of the machine, so the children's records line up as they are.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Any, TextIO

from .client import Record
from .progress import Progress
from .runner import LoadSpec, RunResult, describe_failure, run_load, snapshot
from .tokens import load_counter
from .workloads import Request, Shape, make_workload


@dataclass
class WorkloadSpec:
    """What each child needs to rebuild the run's request stream (generators do not pickle)."""

    name: str
    shape: Shape
    tokenizer: str | None
    special_tokens: bool
    seed: int
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Share:
    """Child `index` of `count`: its part of the load spec, and where its requests sit in the whole stream."""

    index: int
    count: int
    spec: LoadSpec
    workload: WorkloadSpec
    warmup_total: int


def split(total: int, parts: int) -> list[int]:
    """`total` over `parts` as evenly as possible, the first parts taking one more; sums to `total`."""
    return [len(range(k, total, parts)) for k in range(parts)]


def child_seed(seed: int, index: int) -> int:
    """A distinct, deterministic seed for child `index` of a run seeded `seed`."""
    return random.Random(f"loadtest-{seed}-{index}").getrandbits(32)


def check(spec: LoadSpec, processes: int) -> str | None:
    """Why the load cannot be spread over `processes` processes, or None."""
    if processes < 1:
        return "--processes must be at least 1"
    if spec.concurrency is not None and spec.concurrency < processes:
        what = "the in-flight cap (--concurrency)" if spec.rate else "--concurrency"
        return f"{what} ({spec.concurrency}) is below --processes ({processes}): a process would have no stream"
    return None


def shares(spec: LoadSpec, workload: WorkloadSpec, processes: int) -> list[Share]:
    streams = split(spec.concurrency, processes) if spec.concurrency is not None else [None] * processes
    limits = split(spec.max_requests, processes) if spec.max_requests is not None else [None] * processes
    warmups = split(spec.warmup, processes)
    n_urls = len(spec.urls)
    return [
        Share(
            index=k,
            count=processes,
            spec=replace(
                spec,
                urls=[spec.urls[(k + j * processes) % n_urls] for j in range(n_urls)],
                concurrency=streams[k],
                rate=spec.rate / processes if spec.rate else None,
                max_requests=limits[k],
                warmup=warmups[k],
                seed=child_seed(spec.seed, k),
                show_errors=0,  # the parent prints the first failures of all children
                headers=dict(spec.headers),
                extra=dict(spec.extra),
            ),
            workload=workload,
            warmup_total=spec.warmup,
        )
        for k in range(processes)
    ]


def interleave(requests: Iterator[Request], index: int, count: int, warmup: int) -> Iterator[Request]:
    """Child `index`'s requests: of the warm-up requests and then of the measured ones, every `count`-th."""
    for i, req in enumerate(requests):
        if (i if i < warmup else i - warmup) % count == index:
            yield req


def _child(share: Share, out: Any, go: Event, stop: Event) -> None:
    """A worker process: its share of the load; records and its start/end sent to the parent on `out`."""
    logging.disable(logging.WARNING)  # the parent has said what there is to say about the tokenizer
    parent = multiprocessing.parent_process()
    orphaned: Callable[[], bool] = (lambda: not parent.is_alive()) if parent else (lambda: False)
    try:
        w = share.workload
        counter = load_counter(w.tokenizer, w.special_tokens)
        requests = interleave(
            make_workload(w.name, w.shape, counter, w.seed, **w.options), share.index, share.count, share.warmup_total
        )

        def ready() -> None:
            out.put(("ready", share.index))
            while not go.wait(1.0):
                if orphaned():
                    raise SystemExit(1)

        result = asyncio.run(
            run_load(
                share.spec,
                requests,
                on_measure=ready,
                on_record=lambda rec: out.put(("record", rec)),
                stop=lambda: stop.is_set() or orphaned(),
            )
        )
        out.put(("done", share.index, (result.t0, result.t1, result.t0_unix)))
    except BaseException:  # noqa: BLE001 - whatever ends a child, the parent must hear of it
        out.put(("failed", share.index, traceback.format_exc(limit=3)))


class _Merge:
    """The parent's view of the children: their records as they come, who is ready, who has finished."""

    def __init__(self, n: int, total: int | None, show_errors: int, errors: TextIO) -> None:
        self.n = n
        self.total = total
        self.records: list[Record] = []
        self.ready: set[int] = set()
        self.spans: dict[int, tuple[float, float, float]] = {}
        self.failed: dict[int, str] = {}
        self._show = show_errors
        self._errors = errors
        self._error_count = 0

    @property
    def finished(self) -> int:
        return len(self.spans) + len(self.failed)

    def all_ready(self) -> bool:
        return len(self.ready | set(self.spans) | set(self.failed)) == self.n

    def take(self, msg: tuple[Any, ...]) -> None:
        kind, payload = msg[0], msg[1:]
        if kind == "record":
            self._record(payload[0])
        elif kind == "ready":
            self.ready.add(payload[0])
        elif kind == "done":
            self.spans[payload[0]] = payload[1]
        elif kind == "failed":
            self.failed[payload[0]] = payload[1]
            print(f"loadtest: worker process {payload[0]} failed:\n{payload[1]}", file=self._errors, flush=True)

    def _record(self, rec: Record) -> None:
        self.records.append(rec)
        if not rec.ok:
            self._error_count += 1
            if self._error_count <= self._show:
                print(describe_failure(rec), file=self._errors, flush=True)

    def lost(self, k: int, exitcode: int) -> None:
        if k not in self.spans and k not in self.failed:
            self.take(("failed", k, f"exited with code {exitcode} before finishing"))

    def result(self) -> RunResult:
        if not self.spans:
            raise RuntimeError("loadtest: no worker process finished")
        first = min(self.spans.values())
        t1 = max(span[1] for span in self.spans.values())
        return RunResult(sorted(self.records, key=lambda r: r.start), first[0], t1, first[2])


def run_processes(
    parts: list[Share],
    show_errors: int = 5,
    progress: Progress | None = None,
    errors: TextIO | None = None,
    tick_s: float = 0.5,
) -> RunResult:
    """Run the shares in worker processes and merge them into one run (records ordered by start time)."""
    err = errors or sys.stderr
    ctx = multiprocessing.get_context("spawn")
    out, go, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    spec = parts[0].spec
    total = sum(p.spec.max_requests or 0 for p in parts) if spec.max_requests is not None else None
    merge = _Merge(len(parts), total, show_errors, err)
    owns_signals = threading.current_thread() is threading.main_thread()
    # children start with SIGINT ignored (a terminal's Ctrl-C reaches them too): only the parent reacts
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if owns_signals else None
    procs = [ctx.Process(target=_child, args=(p, out, go, stop), name=f"loadtest-{p.index}") for p in parts]

    def interrupt(_sig: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            print("loadtest: interrupted: no new requests; waiting for those in flight", file=err, flush=True)
        stop.set()
        go.set()

    try:
        for proc in procs:
            proc.start()
        if owns_signals:
            signal.signal(signal.SIGINT, interrupt)
        t0 = _collect(merge, procs, out, go, progress, tick_s)
    finally:
        stop.set()
        go.set()
        for proc in procs:
            if proc.pid is not None:
                proc.join(30)
                if proc.is_alive():
                    proc.terminate()
        if owns_signals:
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if progress:
        progress.close(snapshot(merge.records, total, t0))
    return merge.result()


def _collect(merge: _Merge, procs: list[Any], out: Any, go: Event, progress: Progress | None, tick_s: float) -> float:
    """Take the children's messages until all have finished; start them together; feed the progress.
    Returns the moment measuring started (for the progress' rates)."""
    t0 = time.monotonic()
    last = 0.0
    while merge.finished < merge.n:
        try:
            merge.take(out.get(timeout=tick_s))
        except queue.Empty:
            for k, proc in enumerate(procs):
                if proc.exitcode is not None:
                    merge.lost(k, proc.exitcode)
        if not go.is_set() and merge.all_ready():
            go.set()
            t0 = time.monotonic()
        if progress and go.is_set() and time.monotonic() - last >= tick_s:
            last = time.monotonic()
            progress.update(snapshot(merge.records, merge.total, t0))
    return t0
