"""Relay benchmark: the same streaming load sent direct to a simulated worker and through
the gateway, side by side, with the gateway's added latency and CPU cost per relayed chunk.

    python -m bench.relay                      # full run (about 9 minutes)
    python -m bench.relay --quick              # small numbers (under a minute)
    python -m bench.relay --streams 1,32 --skip-pd --json out.json

Layout (2 cores): the gateway is a `pd-gateway serve --config FILE` subprocess pinned to
--gateway-cpu (0); the simulated workers (`python -m workers.sim` subprocesses) and this
process, the load generator, share --client-cpu (1).  The load generator is one uvloop
process speaking raw HTTP/1.1 over asyncio protocols with httptools, one keep-alive
connection per concurrent stream.

Per scenario (N concurrent streams, each sending `rounds` streaming /v1/completions
requests back to back, starts spread evenly over one request duration so requests
arrive at a steady rate):

* TTFT: from writing the request to the arrival of the first content SSE event.
* ITL: gaps between successive content events of a stream, as the client reads them
  (events that arrive in the same read count as 0 ms apart).
* gateway CPU-s per 1,000 chunks: the gateway process's utime+stime (/proc/PID/stat)
  over the measured phase, divided by the SSE events the client received through it.
* errors: non-200, missing [DONE], in-band error events, short streams, client timeouts,
  connection failures.

The relay scenarios also send the same load through reference relays on the gateway's
core (--refs): a byte pipe (bench.pipe, the floor) and a plain aiohttp pass-through
(bench.aiohttp_pass, the issue's reference).

The PD scenario puts a simulated prefill and decode worker (nixl protocol) behind the
gateway and compares it with a direct call to the decode worker (which then prefills
locally), and with the same P-then-D protocol run by the client itself, which isolates
the gateway's own share of the PD overhead from the simulated KV pull.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .coldmem import cold_read_us
from .loadgen import Client, Phase, run_interleaved, run_phase
from .procs import HOST, Proc, _code_version, _free_port, _huge_page_kib, _machine, _raise_nofile, _wait_ready
from .report import REFERENCES, _judge, _scenario, render

RELAY_MODEL = "sim-relay"
PD_MODEL = "sim-pd"


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1,32,512", help="comma list of concurrent stream counts (default: 1,32,512)")
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="max_tokens per request in the concurrent scenarios (default 128; --quick 32)",
    )
    p.add_argument("--itl-ms", type=float, default=20.0, help="simulated inter-token latency (default 20)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="requests per stream, back to back (default: max(3, ceil(128/N)); --quick 1)",
    )
    p.add_argument(
        "--seq-requests",
        type=int,
        default=None,
        help="sequential requests of the 1-stream scenario (default 200; --quick 30)",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=1,
        help="at N > 1 streams, split each target's rounds into this many slices run in turns "
        "(A B C, B C A, ...), so that a slow spell of a shared machine lands on every target alike (default 1)",
    )
    p.add_argument("--seq-tokens", type=int, default=16, help="max_tokens of the 1-stream scenario (default 16)")
    p.add_argument("--quick", action="store_true", help="small numbers, for a fast look")
    p.add_argument("--skip-pd", action="store_true", help="skip the prefill/decode scenario")
    p.add_argument("--pd-streams", default="1,32", help="stream counts of the PD scenario (default 1,32)")
    p.add_argument("--no-pd-client", action="store_true", help="skip the client-run P->D baseline of the PD scenario")
    p.add_argument(
        "--refs",
        default=",".join(k for k in REFERENCES if k != "gw-trace"),
        help="reference relays run on the gateway's core in the relay scenarios: "
        + "; ".join(f"{k}: {what}, {why}" for k, (_, what, why) in REFERENCES.items())
        + " (default: all but gw-trace; '' for none)",
    )
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the gateway of another checkout of this project (e.g. `git worktree add DIR OLD`) "
        "as reference 'base', with the same pools and limits",
    )
    p.add_argument("--gateway-cpu", type=int, default=0, help="core the gateway is pinned to (default 0)")
    p.add_argument(
        "--client-cpu", type=int, default=1, help="core of the sim workers and the load generator (default 1)"
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="client timeout per request (default 10 s + 3x the stream's duration)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.add_argument("--keep-logs", action="store_true", help="keep the gateway/sim logs directory")
    p.add_argument(
        "--tuning",
        action="store_true",
        help="run the gateway with its opt-in interpreter tuning (tuning.huge_pages, tuning.gc_freeze)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every request succeeded (targets are informational)."""
    settings = Settings.from_args(args)
    try:
        import uvloop

        report = uvloop.run(_bench(settings))
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        report = asyncio.run(_bench(settings))
    print(render(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["total_errors"] == 0 else 1


@dataclass
class Settings:
    streams: list[int]
    tokens: int
    itl_ms: float
    rounds: int | None
    seq_requests: int
    seq_tokens: int
    pd_streams: list[int]
    pd_client: bool
    refs: list[str]
    gateway_cpu: int
    client_cpu: int
    timeout_s: float | None
    keep_logs: bool
    slices: int = 1
    tuning: bool = False
    baseline: str | None = None

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> Settings:
        return cls(
            streams=_int_list(a.streams),
            tokens=a.tokens or (32 if a.quick else 128),
            itl_ms=a.itl_ms,
            rounds=a.rounds or (1 if a.quick else None),
            seq_requests=a.seq_requests or (30 if a.quick else 200),
            seq_tokens=a.seq_tokens,
            pd_streams=[] if a.skip_pd else _int_list(a.pd_streams),
            pd_client=not a.no_pd_client,
            refs=_refs(a.refs, a.baseline),
            gateway_cpu=a.gateway_cpu,
            client_cpu=a.client_cpu,
            timeout_s=a.timeout_s,
            keep_logs=a.keep_logs,
            slices=max(1, a.slices),
            tuning=a.tuning,
            baseline=a.baseline and str(Path(a.baseline).resolve()),
        )

    def shape(self, streams: int) -> tuple[int, int]:
        """(requests per stream, tokens per request) of a scenario."""
        if streams == 1:
            return self.seq_requests, self.seq_tokens
        return self.rounds or max(3, math.ceil(128 / streams)), self.tokens


def _refs(text: str, baseline: str | None = None) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip() and x.strip() != "base"]
    unknown = sorted(set(out) - set(REFERENCES))
    if unknown:
        raise SystemExit(f"--refs: unknown {unknown}; choose from {list(REFERENCES)}")
    if baseline:
        if not (Path(baseline) / "gateway").is_dir():
            raise SystemExit(f"--baseline: {baseline} is not a checkout of this project (no gateway/)")
        out.append("base")
    return out


def _int_list(text: str) -> list[int]:
    out = [int(x) for x in text.split(",") if x.strip()]
    if any(n < 1 for n in out):
        raise SystemExit(f"stream counts must be >= 1: {text!r}")
    return out


# --------------------------------------------------------------------------- orchestration


def _gateway_yaml(
    port: int, relay_url: str, p_url: str | None, d_url: str | None, streams: int = 512, tuning: bool = False
) -> str:
    pools = [{"name": "relay", "kind": "replicas", "models": [RELAY_MODEL], "workers": [relay_url]}]
    if p_url and d_url:
        pools.append(
            {
                "name": "pd",
                "kind": "pd",
                "protocol": "nixl",
                "disaggregate_min_tokens": 0,  # every request takes the P->D path it measures
                "models": [PD_MODEL],
                "prefill": [p_url],
                "decode": [d_url],
            }
        )
    # The admission limits are raised above the benchmark's concurrency: it measures the relay,
    # not the queue (a stream's next request can arrive before the gateway released the last).
    cap = max(4096, 4 * streams)
    config = {
        "listen": {"host": HOST, "port": port},
        "log_level": "warning",
        "limits": {"max_inflight": cap, "max_inflight_per_worker": cap},
        "pools": pools,
        "tuning": {"huge_pages": tuning, "gc_freeze": tuning},
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


def _gateway_argv(config: Path) -> list[str]:
    # The module of this checkout, not the venv's console script: a shared venv's script may be
    # another checkout's (PYTHONPATH puts this one first, see procs.Proc).
    return [sys.executable, "-m", "pdcli", "serve", "--config", str(config)]


def _sim_argv(port: int, model: str, itl_ms: float, role: str = "both") -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "workers.sim",
        "--host",
        HOST,
        "--port",
        str(port),
        "--model",
        model,
        "--itl-ms",
        f"{itl_ms:g}",
        "--ttft-ms",
        "0",
    ]
    if role != "both":
        argv += ["--role", role, "--kv-protocol", "nixl"]
    return argv


def _cpus(s: Settings) -> tuple[int | None, int | None, str]:
    avail = sorted(os.sched_getaffinity(0))
    if s.gateway_cpu in avail and s.client_cpu in avail and s.gateway_cpu != s.client_cpu:
        return (
            s.gateway_cpu,
            s.client_cpu,
            (f"gateway pinned to CPU {s.gateway_cpu}; sim workers + load generator pinned to CPU {s.client_cpu}"),
        )
    return None, None, f"NOT pinned (CPUs available: {avail}); figures are less reliable"


async def _bench(s: Settings) -> dict[str, Any]:
    gw_cpu, client_cpu, pinning = _cpus(s)
    code = _code_version()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    _raise_nofile()
    memory = dict(zip(("cold_read_us", "warm_read_us"), cold_read_us(gw_cpu, rounds=5), strict=True))
    itl_s = s.itl_ms / 1000
    log_dir = Path(tempfile.mkdtemp(prefix="pd-gateway-bench-"))
    procs: list[Proc] = []
    started = time.monotonic()
    try:
        relay_port = _free_port()
        sim = Proc("sim-relay", _sim_argv(relay_port, RELAY_MODEL, s.itl_ms), client_cpu, log_dir)
        procs.append(sim)
        p_port = d_port = None
        if s.pd_streams:
            p_port, d_port = _free_port(), _free_port()
            procs.append(Proc("sim-prefill", _sim_argv(p_port, PD_MODEL, s.itl_ms, "prefill"), client_cpu, log_dir))
            procs.append(Proc("sim-decode", _sim_argv(d_port, PD_MODEL, s.itl_ms, "decode"), client_cpu, log_dir))
        for proc, port in zip(procs, [relay_port, p_port, d_port], strict=False):
            await _wait_ready(proc, port, "/health")
        gw_port = _free_port()
        config = log_dir / "gateway.yaml"
        url = lambda port: f"http://{HOST}:{port}"  # noqa: E731
        config.write_text(
            _gateway_yaml(
                gw_port,
                url(relay_port),
                p_port and url(p_port),
                d_port and url(d_port),
                max([1, *s.streams, *s.pd_streams]),
                s.tuning,
            )
        )
        gateway = Proc("gateway", _gateway_argv(config), gw_cpu, log_dir)
        procs.append(gateway)
        refs: dict[str, tuple[Proc, int]] = {}
        for name in s.refs:
            port = _free_port()
            ref = Proc(
                name,
                [
                    sys.executable,
                    "-m",
                    *REFERENCES[name][0].split(),
                    "--listen",
                    str(port),
                    "--upstream",
                    str(relay_port),
                    *(["--checkout", s.baseline] if name == "base" and s.baseline else []),
                ],
                gw_cpu,
                log_dir,
            )
            procs.append(ref)
            await _wait_ready(ref, port, "/health")
            refs[name] = ref, port
        await _wait_ready(gateway, gw_port, "/ready")
        memory["gateway_huge_page_kib"] = _huge_page_kib(gateway.pid)

        scenarios: list[dict[str, Any]] = []
        for n in s.streams:
            rounds, tokens = s.shape(n)
            timeout_s = s.timeout_s or 10 + 3 * tokens * itl_s
            watched = {"gateway": gateway, "sim": sim} | {name: proc for name, (proc, _) in refs.items()}
            targets = [("direct", relay_port), ("via", gw_port)] + [(name, port) for name, (_, port) in refs.items()]
            makers = {label: functools.partial(Client, port, RELAY_MODEL, tokens, timeout_s) for label, port in targets}
            phases = await _run(makers, n, rounds, tokens, itl_s, watched, s.slices)
            scenarios.append(_scenario("relay", n, rounds, tokens, phases))
            _progress(scenarios[-1], started)
        for n in s.pd_streams:
            assert p_port is not None and d_port is not None
            rounds, tokens = s.shape(n)
            timeout_s = s.timeout_s or 10 + 3 * tokens * itl_s
            watched = {"gateway": gateway, "sim": procs[2], "sim-prefill": procs[1]}
            targets = {"direct": (d_port, None), "via": (gw_port, None)}
            if s.pd_client:
                targets["client_pd"] = (d_port, p_port)
            makers = {
                label: functools.partial(Client, port, PD_MODEL, tokens, timeout_s, pport)
                for label, (port, pport) in targets.items()
            }
            phases = await _run(makers, n, rounds, tokens, itl_s, watched, s.slices)
            scenarios.append(_scenario("pd", n, rounds, tokens, phases))
            _progress(scenarios[-1], started)
    except BaseException:
        for p in procs:
            p.stop()
        print(f"bench failed; logs in {log_dir}", file=sys.stderr)
        raise
    for p in procs:
        p.stop()
    report = {
        "machine": dict(_machine(pinning, code), gateway_core=gw_cpu, client_core=client_cpu, **memory),
        "settings": {k: v for k, v in s.__dict__.items()},
        "scenarios": scenarios,
        "elapsed_s": time.monotonic() - started,
    }
    _judge(report)
    if s.keep_logs or report["total_errors"]:
        print(f"gateway and sim logs kept in {log_dir}", file=sys.stderr)
    else:
        for f in log_dir.iterdir():
            f.unlink()
        log_dir.rmdir()
    return report


async def _run(
    makers: dict[str, Any],
    streams: int,
    rounds: int,
    tokens: int,
    itl_s: float,
    watched: dict[str, Proc],
    slices: int = 1,
) -> dict[str, Any]:
    """The targets of one scenario: interleaved request by request at 1 stream, else in turns,
    slice by slice, each slice's order a different permutation of the targets."""
    if streams == 1:
        return await run_interleaved(makers, rounds, tokens, watched)
    slices = min(slices, rounds)
    sizes = [rounds // slices + (i < rounds % slices) for i in range(slices)]
    orders = itertools.cycle(itertools.permutations(makers))
    phases: dict[str, Phase] = {}
    for size in sizes:
        for label in next(orders):
            phase = await run_phase(label, makers[label], streams, size, tokens, itl_s, watched)
            phases[label] = phases[label].merge(phase) if label in phases else phase
    return {label: phases[label] for label in makers}


def _progress(sc: dict[str, Any], started: float) -> None:
    print(
        f"[{time.monotonic() - started:6.1f}s] {sc['kind']} {sc['streams']} stream(s): "
        f"added TTFT p50 {sc['added_ttft_p50_ms']:+.3f} ms, gateway "
        f"{sc['gateway_cpu_s_per_1k_chunks']:.4f} CPU-s/1k chunks, errors "
        f"{sc['direct']['errors']}/{sc['via']['errors']}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
