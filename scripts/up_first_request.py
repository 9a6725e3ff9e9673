#!/usr/bin/env python3
"""Time the first completion after `pd-gateway up` reports serving, N times.

Each run starts `python -m pdcli up TOPOLOGY` in its own process group (on free ports:
the topology is copied with its gateway, worker and side-channel ports moved), waits for
the "pd-gateway up: serving URL" line, sends one completion through the gateway and
times it, sends a second one, then stops `up` (SIGINT) and waits for it to exit.
Prints one line per run (startup, warm-up lines seen, first and second completion,
load average, the CPU affinity of every vLLM worker process) and a summary.

  .venv/bin/python scripts/up_first_request.py --runs 5
  .venv/bin/python scripts/up_first_request.py --runs 3 --up-arg=--warmup-rounds=0   # without the warm-up
  .venv/bin/python scripts/up_first_request.py --env VLLM_CPU_OMP_THREADS_BIND=auto  # add to the topology's env
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.launch import bindable, free_port, group_members  # noqa: E402

SERVING = "pd-gateway up: serving "


def free_run(n: int) -> int:
    """A port p such that p .. p+n-1 are all free now."""
    while True:
        base = free_port()
        if all(bindable(base + i) for i in range(1, n)):
            return base


def moved_topology(src: Path, env: list[str], python: str) -> dict[str, Any]:
    """The topology on free ports, run by `python`, with absolute model paths and `env` added."""
    topo = yaml.safe_load(src.read_text())
    topo["python"] = python
    topo["gateway"]["port"] = free_port()
    for model in topo.get("models", []):
        if not Path(model["path"]).is_absolute():
            model["path"] = str(ROOT / model["path"])
    for pool in topo["pools"]:
        for role in ("prefill", "decode"):
            if role in pool:
                pool[role]["base_port"] = free_port()
        if "base_port" in pool:
            pool["base_port"] = free_port()
        if pool.get("connector") == "nixl":  # worker i of the pool listens on base + i
            workers = sum(pool.get(r, {}).get("count", 0) for r in ("prefill", "decode"))
            pool["side_channel_base_port"] = free_run(workers)
    for item in env:
        key, _, value = item.partition("=")
        topo.setdefault("env", {})[key] = value
    return topo


def complete(url: str, model: str, timeout_s: float) -> float:
    body = {"model": model, "prompt": "The first request after serving", "max_tokens": 8, "temperature": 0}
    req = urllib.request.Request(f"{url}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        answer = json.loads(resp.read())
    assert answer["usage"]["completion_tokens"] == 8, answer
    return time.monotonic() - t0


def worker_affinity(log_dir: Path) -> str:
    """'name:cpus' of every VLLM::Worker process of each worker group (from workers.json)."""
    rows = json.loads((log_dir / "workers.json").read_text())["workers"]
    found = []
    for row in rows:
        if row.get("pid") is None:
            continue
        for pid in group_members(row["pid"]):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("VLLM::Worker"):
                cpus = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Cpus_allowed_list"))
                found.append(f"{row['name']}:{cpus}")
    return " ".join(found) or "-"


def wait_serving(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"up exited with {proc.wait()} before serving")
        if line.startswith(SERVING):
            return line
    raise RuntimeError(f"up did not serve in {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def one_run(args: argparse.Namespace, n: int, base: Path) -> dict[str, Any]:
    run_dir = base / f"run{n}"
    run_dir.mkdir(parents=True)
    topo = moved_topology(Path(args.topology), args.env, args.python)
    (run_dir / "topology.yaml").write_text(yaml.safe_dump(topo))
    argv = [args.python, "-m", "pdcli", "up", str(run_dir / "topology.yaml"), "--log-dir", str(run_dir / "logs")]
    t0 = time.monotonic()
    with (run_dir / "up.stderr").open("wb") as err:
        proc = subprocess.Popen(argv + args.up_arg, cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)  # fmt: skip
    try:
        line = wait_serving(proc, args.start_timeout)
        startup_s = time.monotonic() - t0
        url = line.split()[3]
        model = topo["pools"][0]["model"]
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        first = complete(url, model, args.timeout)
        second = complete(url, model, args.timeout)
        affinity = worker_affinity(run_dir / "logs")
    finally:
        rc = stop(proc)
    warm = [ln for ln in (run_dir / "up.stderr").read_text().splitlines() if ": warm (" in ln or "failed:" in ln]
    return {"startup_s": startup_s, "first_s": first, "second_s": second, "load": load, "rc": rc,
            "affinity": affinity, "warmup": "; ".join(w.split("pd-gateway up: ")[-1] for w in warm) or "-"}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("topology", nargs="?", default=str(ROOT / "deploy/topologies/nixl-1p1d-cpu.yaml"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    ap.add_argument("--up-arg", action="append", default=[], help="extra flag for `up` (repeat)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE added to the topology's env")
    ap.add_argument("--limit", type=float, default=3.0, help="a first completion should take less (s)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--start-timeout", type=float, default=900.0)
    ap.add_argument("--out", help="folder for the runs' topologies and logs (default: a temp dir)")
    args = ap.parse_args()
    base = Path(args.out or tempfile.mkdtemp(prefix="up-first-"))
    print(f"{args.runs} run(s) of up {args.topology}; logs in {base}", flush=True)
    firsts = []
    for n in range(1, args.runs + 1):
        r = one_run(args, n, base)
        firsts.append(r["first_s"])
        print(f"run {n}: serving after {r['startup_s']:.0f} s; first completion {r['first_s']:.2f} s, "
              f"second {r['second_s']:.2f} s; load {r['load']}; up exit {r['rc']}; workers {r['affinity']}; "
              f"warm-up: {r['warmup']}", flush=True)  # fmt: skip
    under = sum(t < args.limit for t in firsts)
    print(f"first completions: {', '.join(f'{t:.2f}' for t in firsts)} s; {under}/{len(firsts)} under {args.limit:g} s")
    return 0 if under == len(firsts) else 1


if __name__ == "__main__":
    sys.exit(main())
