"""Front-door and slow-client bounds (issue 23), this checkout side by side with another:

    python -m bench.resource_bounds                       # this checkout only
    python -m bench.resource_bounds --baseline DIR        # and DIR's gateway (e.g. `git archive` of an older commit)

Per gateway, in front of one simulated worker (`--itl-ms 0`), with an API key and
`limits: {max_inflight: 50, queue: 50, queue_timeout_s: 10}`:

* parked bodies: `--parkers` clients without a key each announce a 16 MiB body and send all
  of it but its last byte, then wait; the gateway's RSS growth (now and at its peak, VmHWM)
  while they wait.
* non-reading streams: `--non-readers` clients with a key each start a long stream and never
  read it; RSS growth after a while, then `--probes` ordinary requests sent together: how many
  got 200 and how long they took (p50 / max), and the gateway's admission slots in use.

A variant's own config keys go only to the gateway that knows them (`timeouts.client_write_s`
here, `--client-write-s`); a baseline runs with its own defaults otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .procs import HOST, ROOT, Proc, _free_port, _raise_nofile, _wait_ready

KEY = "bench-key"
MODEL = "sim-bounds"
BODY = 16 * 1024 * 1024


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _config(port: int, upstream: int, client_write_s: float | None) -> dict:
    config: dict = {
        "listen": {"host": HOST, "port": port},
        "log_level": "warning",
        "auth": {"api_keys": [KEY]},
        "limits": {"max_inflight": 50, "queue": 50, "queue_timeout_s": 10},
        "pools": [{"name": "sim", "models": [MODEL], "workers": [f"http://{HOST}:{upstream}"]}],
    }
    if client_write_s is not None:
        config["timeouts"] = {"client_write_s": client_write_s}
    return config


def _request(body: dict, key: bool = True) -> bytes:
    raw = json.dumps(body).encode()
    auth = f"authorization: Bearer {KEY}\r\n".encode() if key else b""
    return b"POST /v1/completions HTTP/1.1\r\nhost: b\r\n%scontent-length: %d\r\n\r\n%s" % (auth, len(raw), raw)


async def _park(port: int) -> None:
    """Announce a 16 MiB body without a key, send all but its last byte, and wait."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: b\r\ncontent-length: %d\r\n\r\n" % BODY)
        chunk = b"x" * (1 << 20)
        for i in range(16):
            writer.write(chunk if i < 15 else chunk[:-1])
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # refused and closed at the head: what the bound is for


def _non_reader(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, port))
    s.sendall(_request({"model": MODEL, "prompt": "hi", "max_tokens": 1_000_000, "stream": True}))
    return s


async def _probe(port: int) -> tuple[int, float]:
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(_request({"model": MODEL, "prompt": "hi", "max_tokens": 8}))
        status = int((await asyncio.wait_for(reader.readline(), 60)).split()[1])
        return status, time.monotonic() - start
    finally:
        writer.close()


async def _measure(name: str, gw: Proc, port: int, a: argparse.Namespace) -> dict:
    pid = gw.pid
    for _ in range(5):
        await _probe(port)
    base = _kib(pid, "VmRSS")
    out: dict = {"gateway": name, "rss_start_mb": round(base / 1024, 1)}
    parkers = [asyncio.create_task(_park(port)) for _ in range(a.parkers)]
    await asyncio.wait(parkers, timeout=60)
    await asyncio.sleep(1.0)  # they wait with their bodies parked
    out["parked_rss_growth_mb"] = round((_kib(pid, "VmRSS") - base) / 1024, 1)
    out["parked_peak_growth_mb"] = round((_kib(pid, "VmHWM") - base) / 1024, 1)
    for task in parkers:
        task.cancel()
    await asyncio.sleep(3.0)  # the parked connections go
    base = _kib(pid, "VmRSS")
    stuck = [_non_reader(port) for _ in range(a.non_readers)]
    await asyncio.sleep(a.wait_s)
    out["non_readers_rss_growth_mb"] = round((_kib(pid, "VmRSS") - base) / 1024, 1)
    probes = await asyncio.gather(*(_probe(port) for _ in range(a.probes)), return_exceptions=True)
    ok = [p[1] for p in probes if isinstance(p, tuple) and p[0] == 200]
    out["probes_200"] = f"{len(ok)}/{a.probes}"
    out["probe_p50_s"] = round(statistics.median(ok), 2) if ok else None
    out["probe_max_s"] = round(max(ok), 2) if ok else None
    out["other_statuses"] = sorted({p[0] if isinstance(p, tuple) else type(p).__name__ for p in probes} - {200})
    for s in stuck:
        s.close()
    return out


def _serve(checkout: str, config_path: str) -> None:
    """Replace this process with `checkout`'s gateway (its own packages first on the path)."""
    env = dict(os.environ, PYTHONPATH=checkout)
    os.chdir(checkout)
    os.execve(sys.executable, [sys.executable, "-m", "pdcli", "serve", "--config", config_path], env)


async def _run(a: argparse.Namespace) -> list[dict]:
    log_dir = Path(tempfile.mkdtemp(prefix="pd-bounds-"))
    upstream = _free_port()
    sim_argv = [sys.executable, "-m", "workers.sim", "--host", HOST, "--port", str(upstream), "--model", MODEL]
    sim = Proc("sim", [*sim_argv, "--itl-ms", "0", "--ttft-ms", "0", "--max-model-len", "2000000"], None, log_dir)
    results = []
    try:
        await _wait_ready(sim, upstream, "/health")
        variants = [("this", str(ROOT), a.client_write_s)]
        if a.baseline:
            variants.append(("baseline", str(Path(a.baseline).resolve()), None))
        for name, checkout, write_s in variants:
            port = _free_port()
            path = log_dir / f"{name}.yaml"
            path.write_text(json.dumps(_config(port, upstream, write_s)))
            argv = [sys.executable, "-m", "bench.resource_bounds", "--serve", checkout, str(path)]
            gw = Proc(f"gateway-{name}", argv, None, log_dir)
            try:
                await _wait_ready(gw, port, "/health")
                results.append(await _measure(name, gw, port, a))
            finally:
                gw.stop()
    finally:
        sim.stop()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.resource_bounds", description=__doc__)
    p.add_argument("--baseline", help="another checkout of this project, measured in the same run")
    p.add_argument("--parkers", type=int, default=100)
    p.add_argument("--non-readers", type=int, default=50)
    p.add_argument("--probes", type=int, default=20)
    p.add_argument("--wait-s", type=float, default=8.0, help="how long the non-readers hold on before the probes")
    p.add_argument("--client-write-s", type=float, default=5.0, help="this checkout's timeouts.client_write_s")
    p.add_argument("--serve", nargs=2, metavar=("CHECKOUT", "CONFIG"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve:
        _serve(*a.serve)
        return
    _raise_nofile()
    results = asyncio.run(_run(a))
    keys = list(results[0])
    print(" | ".join(keys))
    for row in results:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
