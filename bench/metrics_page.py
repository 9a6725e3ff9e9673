"""What reading the workers' /metrics costs the gateway, before (prometheus_client's full parse
of every page, all workers polled at once) and after (the lines it needs, polls spread over the
interval), in one run.

1. Parse: CPU per page of a real vLLM 0.32 CPU page (tests/fixtures/vllm_metrics.txt, 51 KB;
   `--page FILE` for another), and what that is in % of a core per worker at the interval.
2. Poll rounds: `--workers N` endpoints (paths of one page server in its own process) polled by
   the gateway's WorkerMetricsPoller: the gateway process's CPU per worker per round (HTTP
   included), and the longest the event loop went without turning during the rounds (a task
   that yields each turn records the gaps).

    python -m bench.metrics_page [--workers 4,64,256] [--rounds 3] [--interval-s 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway import worker_metrics
from gateway.config import Timeouts, WorkerMetrics
from gateway.pool import Endpoint
from gateway.upstream import Upstream
from gateway.worker_metrics import RUNNING, WAITING, WorkerMetricsPoller, WorkerReport, parse_report

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "vllm_metrics.txt"


def full_parse(body: bytes | str) -> WorkerReport | None:
    """The parser before: every metric family of the page through prometheus_client."""
    text = body.decode() if isinstance(body, bytes) else body
    sums = {RUNNING: 0.0, WAITING: 0.0}
    usage, seen = 0.0, False
    for family in text_string_to_metric_families(text):
        if family.name in sums:
            seen = True
            sums[family.name] += sum(s.value for s in family.samples)
        elif family.name == worker_metrics.KV_USAGE:
            usage = max((s.value for s in family.samples), default=0.0)
    return WorkerReport(int(sums[RUNNING]), int(sums[WAITING]), usage) if seen else None


class AllAtOnce(WorkerMetricsPoller):
    """The round before: every endpoint's poll started at once."""

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(e) for e in self.endpoints()))


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def per_page_us(parse: Callable[[bytes], object], page: bytes, n: int) -> float:
    t0 = time.thread_time()
    for _ in range(n):
        parse(page)
    return (time.thread_time() - t0) / n * 1e6


async def serve_page(page: bytes, port_out: list[int]) -> None:
    """A keep-alive HTTP/1.1 server that answers every GET with `page` (the page server)."""
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(page), page)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port_out.append(server.sockets[0].getsockname()[1])
    print(port_out[0], flush=True)
    await server.serve_forever()


async def rounds(poller: WorkerMetricsPoller, n: int, interval_s: float) -> tuple[float, float, float]:
    """CPU seconds of `n` rounds; then, over `n` more, the longest loop turn in CPU time (the
    work one turn did) and in wall time (that plus preemption by other processes), in ms."""
    loop = asyncio.get_running_loop()
    await poller.poll_all()  # connections open, caches warm
    t0 = cpu()
    for _ in range(n):
        start = loop.time()
        await poller.poll_all()
        await asyncio.sleep(max(0.0, start + interval_s - loop.time()))
    spent = cpu() - t0
    worst_cpu = worst_wall = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst_cpu, worst_wall
        wall, used = time.perf_counter(), time.thread_time()
        while not done:
            await asyncio.sleep(0)
            now, now_used = time.perf_counter(), time.thread_time()
            worst_wall, worst_cpu = max(worst_wall, now - wall), max(worst_cpu, now_used - used)
            wall, used = now, now_used

    tick = asyncio.ensure_future(ticker())
    for _ in range(n):
        await poller.poll_all()
    done = True
    await tick
    return spent, worst_cpu * 1000, worst_wall * 1000


async def poll_bench(port: int, workers: list[int], n: int, interval_s: float) -> None:
    config = WorkerMetrics(interval_s=interval_s, timeout_s=5.0)
    print(f"\npoll rounds: {n} per figure, interval {interval_s:g} s, one page server process")
    head = ("workers", "version", "CPU/worker/round", "% core/worker", "longest turn CPU", "wall")
    print("{:>8} {:<8} {:>17} {:>14} {:>17} {:>9}".format(*head))
    for count in workers:
        eps = [Endpoint(f"http://127.0.0.1:{port}/w{i}", "replica", "p") for i in range(count)]
        for name, cls, parse in (("before", AllAtOnce, full_parse), ("after", WorkerMetricsPoller, parse_report)):
            worker_metrics.parse_report = parse  # type: ignore[assignment]
            upstream = Upstream(Timeouts())
            try:
                spent, worst, wall = await rounds(cls(lambda eps=eps: eps, upstream, config), n, interval_s)
            finally:
                await upstream.close()
                worker_metrics.parse_report = parse_report
            assert all(e.cache_tokens for e in eps) or name == "before"
            per = spent / n / count
            share = per / interval_s * 100
            print(f"{count:>8} {name:<8} {per * 1e6:>14.0f} µs {share:>13.3f}% {worst:>14.2f} ms {wall:>6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--page", type=Path, default=FIXTURE)
    ap.add_argument("--workers", default="4,64,256")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interval-s", type=float, default=1.0)
    ap.add_argument("--parse-n", type=int, default=200)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the page server
    args = ap.parse_args()
    page = args.page.read_bytes()
    if args.serve:
        asyncio.run(serve_page(page, []))
        return
    before, after = per_page_us(full_parse, page, args.parse_n), per_page_us(parse_report, page, args.parse_n * 10)
    old, new = full_parse(page), parse_report(page)
    assert old is not None and new is not None and (old.running, old.waiting, old.kv_usage) == (
        new.running, new.waiting, new.kv_usage)  # fmt: skip
    print(f"page {args.page.name}: {len(page) / 1024:.1f} KiB")
    print(
        f"parse, CPU per page: prometheus_client {before:.0f} µs, line scan {after:.1f} µs ({before / after:.0f}x less)"
    )
    shares = before / args.interval_s / 1e4, after / args.interval_s / 1e4
    print(f"  at {args.interval_s:g} s: {shares[0]:.3f}% vs {shares[1]:.4f}% of a core per worker")
    server = subprocess.Popen([sys.executable, "-m", "bench.metrics_page", "--serve", "--page", str(args.page)],
                              stdout=subprocess.PIPE, cwd=ROOT)  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        asyncio.run(poll_bench(port, [int(w) for w in args.workers.split(",")], args.rounds, args.interval_s))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
