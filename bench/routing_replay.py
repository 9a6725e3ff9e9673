"""The routing benchmark replayed in simulated time: the same workloads, the gateway's real
policies and request parsing, and a model of the simulated workers (workers.sim's PrefixCache,
one prefill at a time, the same costs), driven by an event queue instead of the clock.

    python -m bench.routing_replay [--policies "prefix_aware,prefix_aware;score=cost"]

Deterministic: no sockets and no wall clock, so a loaded host changes nothing, and a run takes
seconds. What it leaves out of bench.routing: HTTP, the /metrics poller (no other gateway
here, so `foreign` is 0) and the workers' KV usage as a tie-break (0 here); the gateway's
own time is taken as zero. bench.routing stays the end-to-end check.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import Limits
from gateway.policies import Policy, make_policy
from gateway.pool import Endpoint
from gateway.requests import ApiRequest, parse_request
from workers.sim.engine import completion_text, render_chat, with_reply
from workers.sim.prefix_cache import DEFAULT_BLOCK_SIZE, PrefixCache, tokenize

from .routing import DEFAULT_POLICIES, SIM, _table, policy_config, workloads
from .routing_workloads import Workload

CACHE_TOKENS = int(SIM["prefix_cache_blocks"]) * DEFAULT_BLOCK_SIZE  # what each worker's /metrics reports


@dataclass
class Worker:
    """One simulated worker: its prefix cache and the time its single prefill slot frees up."""

    endpoint: Endpoint
    cache: PrefixCache = field(default_factory=lambda: PrefixCache(SIM["prefix_cache_blocks"]))
    free_at: float = 0.0
    served: int = 0

    def prefill(self, now: float, body: dict) -> float:
        """Admit a request at `now`; returns when its first token is out (FIFO, one at a time)."""
        prompt = render_chat(body["messages"])
        computed = self.cache.admit(tokenize(prompt)).uncached_tokens
        start = max(now, self.free_at)
        self.free_at = start + (SIM["ttft_ms"] + SIM["prefill_ms_per_token"] * computed) / 1000
        if SIM["prefix_cache_outputs"]:  # the sim caches the reply once its prefill is done
            self.cache.store(tokenize(with_reply(prompt, completion_text(prompt, 0, body["max_tokens"]))))
        self.served += 1
        return self.free_at


class Replay:
    """One gateway (`policies` of one), or several replicas taking requests in turns (round robin,
    as a Service does), each with its own policy and its own count of what it has in flight;
    the others' requests reach it as the workers' reports would (`foreign`, here exact)."""

    def __init__(self, workload: Workload, policies: list[Policy], workers: int = 4) -> None:
        self.workload, self.policies = workload, policies
        self.workers = [Worker(Endpoint(f"http://w{i}", "replica", "bench")) for i in range(workers)]
        self.views = [
            [Endpoint(f"http://w{i}", "replica", "bench", cache_tokens=CACHE_TOKENS) for i in range(workers)]
            for _ in policies
        ]
        self.received = 0
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.now = 0.0
        self.ttft: list[float] = []
        self.limits = Limits()

    def at(self, when: float, action: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, action))

    def run(self) -> float:
        for index, bodies in enumerate(self.workload.clients):
            self._next(random.Random(index), bodies, 0)
        while self.events:
            self.now, _, action = heapq.heappop(self.events)
            action()
        return self.now

    def _next(self, think: random.Random, bodies: list[dict], i: int) -> None:
        if i < len(bodies):
            self.at(self.now + think.uniform(0, self.workload.think_s), lambda: self._send(think, bodies, i))

    def _send(self, think: random.Random, bodies: list[dict], i: int) -> None:
        body = bodies[i]
        request: ApiRequest = parse_request("chat", json.dumps(body).encode(), self.limits, None)
        replica = self.received % len(self.policies)
        self.received += 1
        policy, eps = self.policies[replica], self.views[replica]
        for w, e in zip(self.workers, eps, strict=True):
            e.foreign = w.endpoint.outstanding - e.outstanding
        chosen = policy.choose(request, eps)
        policy.routed(request, chosen)
        worker = self.workers[eps.index(chosen)]
        chosen.acquire()
        worker.endpoint.acquire()
        first = worker.prefill(self.now, body)
        self.ttft.append(first - self.now)
        done = first + (body["max_tokens"] - 1) * SIM["itl_ms"] / 1000

        def finish() -> None:
            chosen.release()
            worker.endpoint.release()
            self._next(think, bodies, i + 1)

        self.at(done, finish)

    def row(self, wall: float) -> list[str]:
        q = statistics.quantiles(self.ttft, n=100)
        stats = [w.cache.stats for w in self.workers]
        hits, queries = sum(s.hits for s in stats), sum(s.queries for s in stats)
        served = [w.served for w in self.workers]
        return [
            f"{q[49] * 1000:.0f}",
            f"{q[89] * 1000:.0f}",
            f"{q[98] * 1000:.0f}",
            f"{hits / queries:.1%}",
            f"{max(served) / statistics.fmean(served):.2f}",
            f"{len(self.ttft) / wall:.1f}",
            "-",
            "0",
        ]


def replay(workload: Workload, spec: str, replicas: int = 1) -> tuple[list[str], float]:
    config = policy_config(spec)
    name = config.pop("name")
    r = Replay(workload, [make_policy(name, "replica", dict(config)) for _ in range(replicas)])
    wall = r.run()
    return r.row(wall), statistics.median(r.ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--policies", default=DEFAULT_POLICIES)
    parser.add_argument("--replicas", default="1", help="gateway replicas behind round robin, e.g. 1,2,4")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for workload in workloads(args.quick):
        if only and workload.name not in only:
            continue
        base = None
        for spec in ["least_outstanding", *args.policies.split(",")]:
            for replicas in [int(n) for n in args.replicas.split(",")]:
                row, p50 = replay(workload, spec, replicas)
                base = base or p50
                setup = "replay" if replicas == 1 else f"replay x{replicas}"
                rows.append([setup, workload.name, spec, *row, f"{p50 / base:.2f}x"])
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(_table(rows))


if __name__ == "__main__":
    main()
