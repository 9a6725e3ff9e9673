"""How many streams and tokens/s one `pd-gateway loadtest` process sustains on this machine.

Starts a simulated worker in its own process (so its CPU is not the load generator's), runs the
load test's own runner at several stream counts, and prints per step: requests, tokens, wall time,
tokens/s achieved, the load generator's CPU (user+sys of this process) per token and per second,
and the post-processing CPU (llmperf metrics, token counting) per token.

    .venv/bin/python bench/loadtest_capacity.py [--streams 1,16,64,256] [--tokens 200] [--itl-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.runner import LoadSpec, run_load  # noqa: E402
from loadtest.stats import request_metrics  # noqa: E402
from loadtest.tokens import WordCounter  # noqa: E402
from loadtest.workloads import Shape, make_workload  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("simulated worker did not start")


async def _step(urls: list[str], streams: int, requests: int, tokens: int) -> dict[str, float]:
    spec = LoadSpec(urls=urls, model="sim-model", concurrency=streams, max_requests=requests, duration_s=None)
    work = make_workload("random", Shape(100, 0, tokens, 0), WordCounter(), seed=streams)
    warm = LoadSpec(urls=urls, model="sim-model", concurrency=streams, max_requests=streams, duration_s=None)
    await run_load(warm, work)  # connections and code paths warm
    cpu0 = _cpu()
    result = await run_load(spec, work)
    cpu1 = _cpu()
    counter = WordCounter()
    rows = [request_metrics(r, counter, result.t0) for r in result.records]
    cpu2 = _cpu()
    ok = sum(1 for r in result.records if r.ok)
    n_tokens = sum(r["number_output_tokens"] for r in rows)
    return {
        "streams": streams,
        "requests": ok,
        "errors": len(rows) - ok,
        "tokens": n_tokens,
        "wall_s": result.wall_s,
        "tok_per_s": n_tokens / result.wall_s,
        "cpu_us_per_token": (cpu1 - cpu0) / n_tokens * 1e6,
        "cpu_per_s": (cpu1 - cpu0) / result.wall_s,
        "post_us_per_token": (cpu2 - cpu1) / n_tokens * 1e6,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,16,64,256")
    p.add_argument("--tokens", type=int, default=200, help="output tokens per request")
    p.add_argument("--requests-per-stream", type=int, default=8)
    p.add_argument("--itl-ms", type=float, default=0.0, help="the simulated worker's inter-token latency")
    p.add_argument("--sims", type=int, default=1, help="simulated workers (processes), spread round-robin")
    args = p.parse_args()
    ports = [_free_port() for _ in range(args.sims)]
    sims = [
        subprocess.Popen(
            [sys.executable, "-m", "workers.sim", "--port", str(port), "--itl-ms", str(args.itl_ms)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port in ports:
            _wait_ready(port)
        urls = [f"http://127.0.0.1:{port}/v1/chat/completions" for port in ports]
        print(
            f"{args.sims} simulated worker(s) itl_ms={args.itl_ms}, {args.tokens} tokens/request, one loadtest process"
        )
        print(
            f"{'streams':>7} {'requests':>8} {'errors':>6} {'tokens':>8} {'wall s':>7} {'tok/s':>8} "
            f"{'CPU us/tok':>10} {'CPU s/s':>7} {'post us/tok':>11}"
        )
        for streams in (int(s) for s in args.streams.split(",")):
            r = asyncio.run(_step(urls, streams, streams * args.requests_per_stream, args.tokens))
            print(
                f"{r['streams']:>7} {r['requests']:>8} {r['errors']:>6} {r['tokens']:>8} {r['wall_s']:>7.2f} "
                f"{r['tok_per_s']:>8.0f} {r['cpu_us_per_token']:>10.1f} {r['cpu_per_s']:>7.2f} "
                f"{r['post_us_per_token']:>11.2f}",
                flush=True,
            )
    finally:
        for sim in sims:
            sim.terminate()
            sim.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
