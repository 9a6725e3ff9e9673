"""Two tenants, one flooding at 10x its budget: does the other one notice?

    python -m bench.tenants [--seconds 15] [--calm-rps 8] [--budget-rpm 300] [--capacity 4]

A simulated worker (CPU 1) behind the gateway (CPU 0), the load generator in this process
(CPU 1). `calm` sends streams open-loop at --calm-rps; `flood` at ten times its budget of
--budget-rpm. Each gateway runs two phases, calm alone and calm + flood, and the same run
measures two gateways:

    tenants   calm and flood are tenants of one priority class; flood has its budget
    wfq       the same tenants, flood without a budget: only the fair queue protects calm
    fifo      both keys are plain `auth.api_keys` (no tenants): one FIFO queue, no budgets

`limits.max_inflight` (--capacity) stands for what the fleet can take at once. The figure of
merit: calm's TTFT p50 with the flood over calm's alone, on the `tenants` gateway (target
<= 1.2), next to the same ratio on `fifo`; and that flood's excess got 429 with Retry-After.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .procs import HOST, Proc, _code_version, _free_port, _machine, _wait_ready

MODEL = "sim-model"


class Outcome:
    __slots__ = ("status", "ttft", "retry_after", "error")

    def __init__(self) -> None:
        self.status = 0
        self.ttft: float | None = None
        self.retry_after: str | None = None
        self.error: str | None = None


async def one_request(port: int, key: str, tokens: int) -> Outcome:
    """One streamed completion on its own connection: its status, TTFT and Retry-After."""
    out = Outcome()
    body = json.dumps({"model": MODEL, "prompt": "fair share", "max_tokens": tokens, "stream": True}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as err:
        out.error = f"connect: {err}"
        return out
    try:
        writer.write(head + body)
        status_line = await reader.readline()
        out.status = int(status_line.split()[1])
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "retry-after":
                out.retry_after = value.strip()
        seen = b""
        while chunk := await reader.read(65536):
            if out.ttft is None and out.status == 200:
                seen = (seen + chunk)[-4096:]
                if b'"choices":[{' in seen:
                    out.ttft = time.perf_counter() - start
    except (OSError, ValueError, IndexError) as err:
        out.error = repr(err)
    finally:
        writer.close()
    return out


async def open_loop(port: int, key: str, rps: float, seconds: float, tokens: int) -> list[Outcome]:
    """Requests started every 1/rps seconds for `seconds`, whatever the answers."""
    tasks: list[asyncio.Task[Outcome]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while (due := start + n / rps) < start + seconds:
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(one_request(port, key, tokens)))
        n += 1
    return list(await asyncio.gather(*tasks))


def _gateway_config(port: int, worker: str, capacity: int, budget_rpm: float, variant: str) -> dict:
    config: dict = {
        "listen": {"host": HOST, "port": port},
        "log_level": "warning",
        "observability": {"request_metrics": True, "access_log": False},
        "limits": {"max_inflight": capacity, "queue": 4096, "queue_timeout_s": 60},
        "pools": [{"name": "dp", "models": [MODEL], "workers": [worker]}],
    }
    if variant != "fifo":
        budget = {"requests_per_minute": budget_rpm, "burst_s": 1} if variant == "tenants" else {}
        config["tenants"] = [{"name": "calm", "api_keys": ["kc"]}, {"name": "flood", "api_keys": ["kf"], **budget}]
    else:
        config["auth"] = {"api_keys": ["kc", "kf"]}
    return config


def _summary(outcomes: list[Outcome]) -> dict:
    ttfts = sorted(o.ttft * 1000 for o in outcomes if o.ttft is not None)
    statuses = Counter(str(o.status) if o.error is None else "error" for o in outcomes)
    refused = [o for o in outcomes if o.status == 429]
    return {
        "requests": len(outcomes),
        "statuses": dict(statuses),
        "ttft_p50_ms": round(statistics.median(ttfts), 2) if ttfts else None,
        "ttft_p90_ms": round(ttfts[int(0.9 * (len(ttfts) - 1))], 2) if ttfts else None,
        "429_with_retry_after": sum(1 for o in refused if o.retry_after and o.retry_after.isdigit()),
    }


async def _phase(port: int, args: argparse.Namespace, flood: bool) -> dict:
    jobs = [open_loop(port, "kc", args.calm_rps, args.seconds, args.tokens)]
    if flood:
        jobs.append(open_loop(port, "kf", 10 * args.budget_rpm / 60, args.seconds, args.tokens))
    results = await asyncio.gather(*jobs)
    out = {"calm": _summary(results[0])}
    if flood:
        out["flood"] = _summary(results[1])
    return out


async def _run(args: argparse.Namespace) -> dict:
    log_dir = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
    cpus = sorted(os.sched_getaffinity(0))
    gw_cpu, client_cpu = (0, 1) if len(cpus) >= 2 else (None, None)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    w_port = _free_port()
    argv = [sys.executable, "-m", "workers.sim", "--host", HOST, "--port", str(w_port), "--model", MODEL]
    worker = Proc("sim", [*argv, "--itl-ms", f"{args.itl_ms:g}", "--ttft-ms", f"{args.ttft_ms:g}"], client_cpu, log_dir)
    procs = [worker]
    results: dict = {}
    try:
        await _wait_ready(worker, w_port, "/health")
        for name in ("tenants", "wfq", "fifo"):
            port = _free_port()
            path = log_dir / f"{name}.json"
            config = _gateway_config(port, f"http://{HOST}:{w_port}", args.capacity, args.budget_rpm, name)
            path.write_text(json.dumps(config))
            gw = Proc(
                f"gateway-{name}", [sys.executable, "-m", "pdcli", "serve", "--config", str(path)], gw_cpu, log_dir
            )
            procs.append(gw)
            await _wait_ready(gw, port, "/ready")
            await open_loop(port, "kc", 20, 0.5, args.tokens)  # warm-up
            alone = await _phase(port, args, flood=False)
            together = await _phase(port, args, flood=True)
            gw.stop()
            results[name] = {"alone": alone, "flood": together}
    finally:
        for p in procs:
            p.stop()
    return results


def _print(results: dict, args: argparse.Namespace) -> None:
    print(
        f"calm: {args.calm_rps:g} req/s; flood: {10 * args.budget_rpm / 60:g} req/s = 10x its budget of "
        f"{args.budget_rpm:g}/min; streams of {args.tokens} tokens, "
        f"sim ttft {args.ttft_ms:g} ms, itl {args.itl_ms:g} ms; "
        f"max_inflight {args.capacity}; {args.seconds:g} s per phase"
    )
    print(
        f"{'gateway':9s} {'phase':12s} {'calm p50':>9s} {'calm p90':>9s} {'calm 200/all':>13s} "
        f"{'flood statuses':>30s} {'429 w/ Retry-After':>19s}"
    )
    for name, phases in results.items():
        for phase, r in phases.items():
            calm = r["calm"]
            ok = f"{calm['statuses'].get('200', 0)}/{calm['requests']}"
            flood = r.get("flood")
            fl = json.dumps(flood["statuses"]) if flood else "-"
            ra = f"{flood['429_with_retry_after']}/{flood['statuses'].get('429', 0)}" if flood else "-"
            print(
                f"{name:9s} {phase:12s} {calm['ttft_p50_ms']!s:>9s} {calm['ttft_p90_ms']!s:>9s} "
                f"{ok:>13s} {fl:>30s} {ra:>19s}"
            )
        a, f = phases["alone"]["calm"]["ttft_p50_ms"], phases["flood"]["calm"]["ttft_p50_ms"]
        ratio = f / a if a and f else float("nan")
        verdict = ("PASS" if ratio <= 1.2 else "FAIL") if name == "tenants" else "(reference)"
        print(f"{name:9s} calm TTFT p50 with flood / alone: {ratio:.2f}  target <= 1.2  {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase (default 15)")
    p.add_argument("--calm-rps", type=float, default=8.0)
    p.add_argument("--budget-rpm", type=float, default=300.0, help="flood's requests_per_minute (it sends 10x)")
    p.add_argument("--capacity", type=int, default=4, help="limits.max_inflight (default 4)")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    results = asyncio.run(_run(args))
    print(f"machine: {json.dumps(_machine('gateway CPU 0, sim + load generator CPU 1', _code_version()))}")
    _print(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
