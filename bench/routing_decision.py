"""The prefix_aware decision alone: 8 workers, a tree of 100k prefix blocks, 500-token prompts;
and the tree's memory per block (tracemalloc).

    python -m bench.routing_decision [--chunks 64,256] [--scores match,cost]

Times are thread CPU (what this process spent, not time it was preempted) and wall clock,
of `choose` alone (what delays a request) and of `choose` + `routed` (recording the prompt in
the tree, which the gateway runs in the loop turn after the request was sent): the CPU a routed
request costs in all.
"""

from __future__ import annotations

import argparse
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


def _p(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49]:.1f} p99 {q[98]:.1f}"


def decision_row(chunk: int = 64, score: str = "match", workers: int = 8, blocks: int = 100_000) -> str:
    rng = random.Random(7)
    eps = [Endpoint(f"http://w{i}", "replica", "p") for i in range(workers)]
    options = {"max_blocks": blocks // workers, "chunk_chars": chunk, "score": score}
    policy = make_policy("prefix_aware", "replica", options)
    prompts = [words(rng, 330)[:2000] for _ in range(int(blocks * 1.2) // (2000 // chunk) + 1)]  # 2000 characters
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, text in enumerate(prompts):
        policy.routed(_Req(text), eps[i % workers])
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    held = len(policy.view.owners)  # type: ignore[attr-defined]
    choose_cpu: list[float] = []
    both_cpu: list[float] = []
    both_wall: list[float] = []
    gc.freeze()  # as the gateway does once serving: the tree's objects leave the collector's scans
    for i in range(5000):
        base = prompts[rng.randrange(len(prompts))] if i % 2 else words(rng, 330)
        req = _Req(base[:1800] + words(rng, 40)[:200])
        for e in eps:  # some load, so that cost mode sums a backlog
            e.outstanding = rng.randrange(4)
        start, cpu = time.perf_counter_ns(), time.thread_time_ns()
        chosen = policy.choose(req, eps)
        mid = time.thread_time_ns()
        policy.routed(req, chosen)
        end = time.thread_time_ns()
        both_wall.append((time.perf_counter_ns() - start) / 1000)
        choose_cpu.append((mid - cpu) / 1000)
        both_cpu.append((end - cpu) / 1000)
    gc.unfreeze()
    return (
        f"chunk_chars={chunk} score={score}: {workers} workers, {held} blocks in the tree, "
        f"{2000 // chunk} per prompt | choose CPU {_p(choose_cpu)} µs | choose+record CPU {_p(both_cpu)} µs, "
        f"wall {_p(both_wall)} µs | {used / held:.0f} bytes per block ({used / 2**20:.1f} MiB)"
    )


def decision_table(chunks: tuple[int, ...] = (64, 256), scores: tuple[str, ...] = ("match", "cost")) -> str:
    return "\n".join(decision_row(c, s) for c in chunks for s in scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", default="64,256")
    parser.add_argument("--scores", default="match,cost")
    args = parser.parse_args()
    chunks = tuple(int(c) for c in args.chunks.split(","))
    print(decision_table(chunks, tuple(args.scores.split(","))))


if __name__ == "__main__":
    main()
