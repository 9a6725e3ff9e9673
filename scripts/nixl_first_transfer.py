#!/usr/bin/env python3
"""Minimal reproduction of the slow first NIXL transfer on CPU (docs/real-vllm.md, item 2).

Starts two bare vLLM CPU servers with NixlConnector (P: kv_producer, D: kv_consumer,
the flags of docs/real-vllm.md), waits for /health, then does P->D transfers by hand:
P with max_tokens=1 and kv_transfer_params {"do_remote_decode": true}, then D with the
kv_transfer_params P returned. Prints the P and D seconds of every round, the machine's
load, and the NIXL lines of both logs with their times; stops both groups.

  .venv/bin/python scripts/nixl_first_transfer.py --rounds 5
  .venv/bin/python scripts/nixl_first_transfer.py --lease 8 --debug     # VLLM_LOGGING_LEVEL=DEBUG
  .venv/bin/python scripts/nixl_first_transfer.py --pause 3             # idle seconds between rounds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.plan_launch import NIXL_CPU_SITE  # noqa: E402

from workers.launch import free_port, group_members, start_group, wait_healthy  # noqa: E402
from workers.warmup import post_json  # noqa: E402

ENV: dict[str, str | None] = {
    "VLLM_CPU_KVCACHE_SPACE": None,
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
}
INTERESTING = re.compile(r"nixl|handshake|expired|Releasing|Potentially|remote engine|Transfer plan", re.I)


def server_argv(args: argparse.Namespace, port: int, role: str) -> list[str]:
    kv: dict[str, object] = {"kv_connector": "NixlConnector", "kv_role": role, "kv_buffer_device": "cpu"}
    extra = json.loads(args.extra_config) if args.extra_config else {}
    if args.lease is not None:
        extra["kv_lease_duration"] = args.lease
    if extra:
        kv["kv_connector_extra_config"] = extra
    return [
        args.python, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
        "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8",
        "--kv-cache-memory-bytes", "64M", "--seed", "0", "--kv-transfer-config", json.dumps(kv),
        *args.server_arg,
    ]  # fmt: skip


def server_env(args: argparse.Namespace, side_port: int) -> dict[str, str | None]:
    env = {**ENV, "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1", "VLLM_NIXL_SIDE_CHANNEL_PORT": str(side_port)}
    if not args.no_site:
        env["PYTHONPATH"] = NIXL_CPU_SITE
    if args.debug:
        env["VLLM_LOGGING_LEVEL"] = "DEBUG"
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


async def one_round(p_url: str, d_url: str, n: int, timeout_s: float) -> tuple[float, float]:
    body = {"model": "tiny", "prompt": f"round {n}: a different prompt every time, so no cache hit", "temperature": 0}
    t0 = time.monotonic()
    p = await post_json(f"{p_url}/v1/completions", {**body, "max_tokens": 1, "stream": False,
                                              "kv_transfer_params": {"do_remote_decode": True}}, timeout_s)  # fmt: skip
    t1 = time.monotonic()
    await post_json(f"{d_url}/v1/completions", {**body, "max_tokens": 2, "kv_transfer_params": p["kv_transfer_params"]},
              timeout_s)  # fmt: skip
    return t1 - t0, time.monotonic() - t1


def spy(py_spy: str, groups: list[tuple[str, int]], out: Path) -> None:
    """Append `py-spy dump --native` of every process of each group, with its kernel state, to `out`."""
    with out.open("a") as f:
        for name, pgid in groups:
            for pid in group_members(pgid):
                stat = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()
                f.write(
                    f"===== {time.strftime('%H:%M:%S')} {name} pid {pid} state {stat[0]} "
                    f"utime {stat[11]} stime {stat[12]}\n"
                )
                f.flush()
                subprocess.run([py_spy, "dump", "--native", "--pid", str(pid)], stdout=f, stderr=f, timeout=60)


def sched(groups: list[tuple[str, int]]) -> dict[int, tuple[str, str, float, float]]:
    """Per process of each group: (server, state, CPU seconds, seconds spent runnable but not running)."""
    out = {}
    for name, pgid in groups:
        for pid in group_members(pgid):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()
                run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
            except OSError:
                continue
            out[pid] = (name, stat[0], int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return out


async def watch(work: asyncio.Future, groups: list[tuple[str, int]], every_s: float, out: Path) -> None:
    """While `work` runs, log every `every_s` how much CPU each process got and how long it
    waited for one (schedstat): a lost wakeup shows as no CPU and no wait, starvation as wait."""
    before = sched(groups)
    t0 = time.monotonic()
    with out.open("a") as f:
        while not (await asyncio.wait([work], timeout=every_s))[0]:
            now = sched(groups)
            f.write(f"--- {time.strftime('%H:%M:%S')} +{time.monotonic() - t0:.1f}s {load()}\n")
            for pid, (name, state, run, wait) in now.items():
                _, _, run0, wait0 = before.get(pid, (name, state, run, wait))
                f.write(f"  {name:8} {pid:7} {state} cpu +{run - run0:6.3f}s  runnable-waiting +{wait - wait0:6.3f}s\n")
            f.flush()
            before = now


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between rounds")
    ap.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    ap.add_argument("--model", default=str(ROOT / ".models/tiny-llama"))
    ap.add_argument("--lease", type=int, help="kv_lease_duration on both (vLLM default 30 s)")
    ap.add_argument("--extra-config", help="kv_connector_extra_config JSON")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for both servers")
    ap.add_argument("--server-arg", action="append", default=[], help="extra vLLM flag for both (repeat)")
    ap.add_argument("--debug", action="store_true", help="VLLM_LOGGING_LEVEL=DEBUG")
    ap.add_argument("--no-site", action="store_true", help="without the pthrDelay patch (workers/nixl_site)")
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--py-spy", help="py-spy binary: dump both servers' stacks every --spy-after s while a round runs")
    ap.add_argument("--spy-after", type=float, default=4.0)
    ap.add_argument("--watch", type=float, metavar="S", help="log CPU and run-queue wait of every process each S s")
    args = ap.parse_args()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="nixl-first-"))
    ports = [free_port() for _ in range(4)]
    servers = []
    t_start = time.monotonic()
    for i, (name, role) in enumerate((("prefill", "kv_producer"), ("decode", "kv_consumer"))):
        argv, env = server_argv(args, ports[i], role), server_env(args, ports[2 + i])
        servers.append((name, f"http://127.0.0.1:{ports[i]}", start_group(argv, env, log_dir / f"{name}.log")))
    try:
        for _, url, handle in servers:
            await wait_healthy(url, 600, handle)
        print(f"both healthy after {time.monotonic() - t_start:.1f} s; {load()}; logs in {log_dir}", flush=True)
        p_url, d_url = servers[0][1], servers[1][1]
        for n in range(args.rounds):
            wall = time.strftime("%H:%M:%S")
            work = asyncio.ensure_future(one_round(p_url, d_url, n, args.timeout))
            if args.watch:
                groups = [(name, handle.pgid) for name, _, handle in servers]
                await watch(work, groups, args.watch, log_dir / "sched.txt")
            if args.py_spy:  # decode first: its worker is the one that waits
                groups = [(name, handle.pgid) for name, _, handle in reversed(servers)]
                while not (await asyncio.wait([work], timeout=args.spy_after))[0]:
                    await asyncio.to_thread(spy, args.py_spy, groups, log_dir / "stacks.txt")
                    print(f"round {n + 1} still running: stacks in {log_dir}/stacks.txt", flush=True)
            p_s, d_s = await work
            print(f"round {n + 1} at {wall}: P {p_s:6.2f} s  D {d_s:6.2f} s  ({load()})", flush=True)
            if args.pause:
                await asyncio.sleep(args.pause)
    finally:
        for _, _, handle in servers:
            handle.stop(10)
    for name, _, handle in servers:
        lines = [ln for ln in handle.log_path.read_text(errors="replace").splitlines() if INTERESTING.search(ln)]
        print(f"--- {name} ({handle.log_path}): {len(lines)} NIXL lines, last 25")
        print("\n".join(ln[:240] for ln in lines[-25:]))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
