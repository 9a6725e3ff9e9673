"""Routing benchmark: each policy against least_outstanding, on simulated workers that model
a prefix cache (prefill charged only on the uncached suffix, one prefill at a time).

    python -m bench.routing [--quick] [--only multi-turn,shared-prefix,no-sharing] [--setups replicas,2p2d]
    python -m bench.routing --setups replicas --policies 'prefix_aware,prefix_aware@p2,prefix_aware@r4,sglang'

A policy may name where the gateway runs (bench/routing_fronts.py): `@pN`, one `pd-gateway serve`
with N processes; `@rN`, N single-process replicas with requests spread in turns; `sglang`, SGLang's
router (cache_aware, its defaults) when sglang-router is installed.

For each setup (4 replicas; a 2P2D pool: prefill by the policy, decode least_outstanding)
and workload, fresh workers are started per policy, the workload is sent through the
gateway, and the table shows TTFT p50/p99, the workers' prefix-cache hit rate (from their
/metrics), requests per worker (max/mean), throughput and the policy's decision time.
A last table times one decision with 8 workers and 100k prefix blocks in the tree.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from workers.sim import SimServer, start_sim

from .routing_decision import decision_table
from .routing_fronts import sglang_installed, split, start_front
from .routing_workloads import Workload, multi_turn, no_sharing, shared_prefix

MODEL = "sim-model"
# Compared with least_outstanding by default: prefix_aware as shipped; with its view sized to the
# workers' cache (1024 blocks x 16 tokens ~ 100k characters ~ 1600 chunks of 64) and a guard
# for ~3 requests per worker (12 clients on 4 workers); and the cost score, sized the same.
DEFAULT_POLICIES = (
    "prefix_aware,prefix_aware;balance_abs_threshold=3;max_blocks=1600,prefix_aware;score=cost;max_blocks=1600"
)
# Prefill costs 0.5 ms per uncached token, one prefill at a time (a 4k-token prompt: 2 s, a
# Trainium 70B's order): large next to the CPU this one process spends per request, so a
# loaded host blurs little. Each worker caches 1024 blocks (16k tokens): less than the
# whole working set, as KV memory is in production. Generated tokens are cached too (vLLM).
SIM = {
    "ttft_ms": 10.0,
    "prefill_ms_per_token": 0.5,
    "itl_ms": 10.0,
    "prefill_concurrency": 1,
    "prefix_cache_blocks": 1024,
    "prefix_cache_outputs": True,  # as vLLM: a reply's blocks stay cached where it was generated
    "max_model_len": 32768,
    "model": MODEL,
}


@dataclass
class Result:
    ttft: list[float]
    hit_rate: float
    per_worker: list[int]
    wall_s: float
    decision_us: list[float]
    errors: int

    def row(self) -> list[str]:
        q = statistics.quantiles(self.ttft, n=100) if len(self.ttft) > 1 else self.ttft * 99
        mean = statistics.fmean(self.per_worker) or 1
        dec = statistics.quantiles(self.decision_us, n=100) if len(self.decision_us) > 1 else [0.0] * 99
        return [
            f"{q[49] * 1000:.0f}",
            f"{q[89] * 1000:.0f}",
            f"{q[98] * 1000:.0f}",
            f"{self.hit_rate:.1%}",
            f"{max(self.per_worker) / mean:.2f}",
            f"{len(self.ttft) / self.wall_s:.1f}",
            f"{dec[49]:.0f}/{dec[98]:.0f}",
            str(self.errors),
        ]


async def _start_workers(setup: str) -> tuple[list[SimServer], dict]:
    if setup == "replicas":
        sims = [await start_sim(dict(SIM)) for _ in range(4)]
        return sims, {"workers": [s.url for s in sims]}
    prefill = [await start_sim({**SIM, "role": "prefill", "kv_protocol": "nixl"}) for _ in range(2)]
    decode = [
        await start_sim({**SIM, "role": "decode", "kv_protocol": "nixl", "kv_peers": [p.url for p in prefill]})
        for _ in range(2)
    ]
    return prefill + decode, {
        "kind": "pd",
        "protocol": "nixl",
        "disaggregate_min_tokens": 0,  # every request takes the P->D path it measures
        "prefill": [p.url for p in prefill],
        "decode": [d.url for d in decode],
    }


def policy_config(spec: str) -> dict:
    """`name` or `name;option=value;...` (numbers as numbers)."""
    name, *pairs = spec.split(";")
    config: dict = {"name": name}
    for pair in pairs:
        key, value = pair.split("=", 1)
        config[key] = float(value) if "." in value else int(value) if value.isdigit() else value
    return config


def _pool(setup: str, spec: str, workers: dict) -> dict:
    pool = {"name": "bench", "models": [MODEL], **workers}
    policy = policy_config(spec)
    if setup == "replicas":
        pool["policy"] = policy
    else:
        pool["prefill_policy"] = policy
        pool["decode_policy"] = "least_outstanding"
    return pool


def _timed(policy: object, sink: list[float]) -> None:
    """Record the time of every decision (choose) the policy makes."""
    choose: Callable = policy.choose  # type: ignore[attr-defined]

    def timed(request: object, candidates: object) -> object:
        start = time.perf_counter_ns()
        try:
            return choose(request, candidates)
        finally:
            sink.append((time.perf_counter_ns() - start) / 1000)

    policy.choose = timed  # type: ignore[attr-defined]


async def _scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    text = (await client.get(url + "/metrics")).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
                found[s.name] = found.get(s.name, 0.0) + s.value
            if s.name == "vllm:request_success_total":
                found["requests"] = found.get("requests", 0.0) + s.value
    return found


async def _one_request(client: httpx.AsyncClient, url: str, body: dict) -> float | str:
    """The time to the first content token, or what went wrong."""
    start = time.perf_counter()
    first: float | str = "no content"
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                return f"{resp.status_code}: {(await resp.aread())[:200]!r}"
            async for line in resp.aiter_lines():
                if isinstance(first, str) and line.startswith("data: ") and '"content"' in line:
                    first = time.perf_counter() - start
    except httpx.HTTPError as err:
        return repr(err)
    return first


async def run_one(setup: str, policy: str, workload: Workload) -> Result:
    sims, workers = await _start_workers(setup)
    spec, mode, _ = split(policy)
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "log_level": "warning",
        "health": {"interval_s": 0.5, "timeout_s": 2.0},
        "pools": [_pool(setup, spec, workers) if mode != "sglang" else {}],
    }
    cache_workers = sims if setup == "replicas" else sims[:2]
    ttft: list[float] = []
    decisions: list[float] = []
    errors = 0
    try:
        front = await start_front(policy, config, [s.url for s in sims])
    except BaseException:
        for s in sims:
            await s.close()
        raise
    if isinstance(front.policy, dict):  # in this process: its decisions are timed
        _timed(front.policy["replica" if setup == "replicas" else "prefill"], decisions)
    sent = 0
    try:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:

            async def run_client(index: int, bodies: list[dict]) -> None:
                nonlocal errors, sent
                think = random.Random(index)  # the same pauses under every policy
                for body in bodies:
                    await asyncio.sleep(think.uniform(0, workload.think_s))
                    url = front.urls[sent % len(front.urls)]  # replicas: in turns, as a Service
                    sent += 1
                    t = await _one_request(client, url, body)
                    if isinstance(t, str):
                        errors += 1
                        if errors == 1:
                            print(f"  first error ({setup}, {policy}, {workload.name}): {t}", flush=True)
                    else:
                        ttft.append(t)

            start = time.perf_counter()
            await asyncio.gather(*(run_client(i, c) for i, c in enumerate(workload.clients)))
            wall = time.perf_counter() - start
            scraped = [await _scrape(client, s.url) for s in cache_workers]
    finally:
        await front.close()
        for s in sims:
            await s.close()
    queries = sum(m.get("vllm:prefix_cache_queries_total", 0.0) for m in scraped)
    hits = sum(m.get("vllm:prefix_cache_hits_total", 0.0) for m in scraped)
    per_worker = [int(m.get("requests", 0)) for m in scraped]
    return Result(ttft, hits / queries if queries else 0.0, per_worker, wall, decisions, errors)


HEADER = [
    "setup",
    "workload",
    "policy",
    "TTFT p50 ms",
    "p90 ms",
    "p99 ms",
    "cache hits",
    "max/mean req",
    "req/s",
    "decide µs p50/p99",
    "errors",
    "p50 vs LO",
]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [
            multi_turn(MODEL, conversations=8, turns=4),
            multi_turn(MODEL, conversations=8, turns=4, generated_replies=False),
            shared_prefix(MODEL, prompts=6, clients=8, per_client=4, low=500, high=2000),
            no_sharing(MODEL, clients=8, per_client=4),
        ]
    return [
        multi_turn(MODEL, conversations=24, turns=6),
        multi_turn(MODEL, conversations=24, turns=6, generated_replies=False),
        shared_prefix(MODEL, clients=12, per_client=10),
        no_sharing(MODEL, clients=12, per_client=8),
    ]


async def main_async(args: argparse.Namespace) -> None:
    rows: list[list[str]] = []
    only = set(args.only.split(",")) if args.only else None
    for setup in args.setups.split(","):
        for workload in workloads(args.quick):
            if only and workload.name not in only:
                continue
            base: float | None = None
            for policy in ["least_outstanding", *args.policies.split(",")]:
                if split(policy)[1] == "sglang" and setup != "replicas":
                    continue  # sglang-router's PD mode is not compared here
                if split(policy)[1] == "sglang" and not sglang_installed():
                    print(f"  {policy}: skipped, sglang-router is not installed (pip install sglang-router==0.3.2)")
                    continue
                result = await run_one(setup, policy, workload)
                p50 = statistics.median(result.ttft) if result.ttft else float("nan")
                base = p50 if base is None else base
                rows.append([setup, workload.name, policy, *result.row(), f"{p50 / base:.2f}x"])
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(_table(rows))
    if not args.skip_decision:
        print()
        print(decision_table())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small workloads (a smoke run)")
    parser.add_argument(
        "--only",
        default="",
        help="workload names, comma-separated (multi-turn, multi-turn-v1, shared-prefix, no-sharing)",
    )
    parser.add_argument("--setups", default="replicas,2p2d")
    parser.add_argument("--skip-decision", action="store_true", help="leave out the decision-time table")
    parser.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help="compared with least_outstanding: comma-separated, each `name[;option=value...]`",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
