"""The prefix_aware decision alone: 8 workers, a tree of 100k prefix blocks, 500-token prompts;
and the tree's memory per block (tracemalloc)."""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
from dataclasses import dataclass

from gateway.policies import make_policy
from gateway.pool import Endpoint

from .routing_workloads import words


@dataclass
class _Req:
    prefix_text: str
    session_key: str | None = None
    model: str = "m"
    route: str = "chat"
    prompt_tokens: int = 500


def decision_table(workers: int = 8, blocks: int = 100_000, samples: int = 5000) -> str:
    rng = random.Random(7)
    eps = [Endpoint(f"http://w{i}", "replica", "p") for i in range(workers)]
    policy = make_policy("prefix_aware", "replica", {"max_blocks": blocks // workers})
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    prompts = []
    while len(prompts) * 31 < blocks * 1.2:  # 2000-character prompts: 31 chunks each
        text = words(rng, 330)[:2000]
        prompts.append(text)
        policy.routed(_Req(text), eps[len(prompts) % workers])
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    times: list[float] = []
    cpu_times: list[float] = []
    gc.freeze()  # as the gateway does once serving: the tree's objects leave the collector's scans
    for i in range(samples):
        base = prompts[rng.randrange(len(prompts))] if i % 2 else words(rng, 330)
        req = _Req(base[:1800] + words(rng, 40)[:200])
        start, cpu = time.perf_counter_ns(), time.thread_time_ns()
        chosen = policy.choose(req, eps)
        policy.routed(req, chosen)
        times.append((time.perf_counter_ns() - start) / 1000)
        cpu_times.append((time.thread_time_ns() - cpu) / 1000)
    q, c = statistics.quantiles(times, n=100), statistics.quantiles(cpu_times, n=100)
    return (
        f"prefix_aware decision (choose + record), {workers} workers, {len(policy.view.owners)} blocks "
        f"in the tree, 500-token (2000-char) prompts: wall p50 {q[49]:.1f} µs, p99 {q[98]:.1f} µs; "
        f"thread CPU p50 {c[49]:.1f} µs, p99 {c[98]:.1f} µs; "
        f"tree memory {used / blocks:.0f} bytes per block ({used / 2**20:.1f} MiB)"
    )
