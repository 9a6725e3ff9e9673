"""The gateway itself as a reference relay, with its per-request telemetry set one way:

    python -m bench.gateway_variant --telemetry off --listen 9000 --upstream 8000
    python -m bench.gateway_variant --telemetry logged --listen 9000 --upstream 8000
    python -m bench.gateway_variant --telemetry traced --listen 9000 --upstream 8000
    python -m bench.gateway_variant --telemetry baseline --checkout DIR --listen 9000 --upstream 8000

`off`: no per-request metrics and no access log (`observability: {request_metrics: false,
access_log: false}`), what the gateway costs without them. `logged`: per-request metrics and
an access line per request actually written (log level info; the measured gateway runs at
warning, which skips the line). Both replace this process with `pd-gateway serve` (same PID,
heap on huge pages as usual), on a `replicas` pool in front of the upstream worker, with the
benchmark's own limits; the relay benchmark runs the same load through them as through the
gateway, so that the telemetry's cost per chunk is read off one run. `baseline`: the gateway
of another checkout of this project (DIR, e.g. a `git worktree` of an older commit) with its
own defaults, so that a change's before and after are read off one run. `traced`: metrics on
(access lines skipped, as in the measured gateway) and every request traced and its spans
exported over OTLP/HTTP to `bench.otlp_sink`, a child process on the port after `--listen`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from .procs import HOST

MODEL = "sim-relay"  # bench.relay.RELAY_MODEL
TELEMETRY = {
    "off": ({"request_metrics": False, "access_log": False}, "warning"),
    "logged": ({"request_metrics": True, "access_log": True}, "info"),
    "baseline": ({}, "warning"),
    "traced": ({"request_metrics": True, "access_log": False}, "warning"),
}


def config(listen: int, upstream: int, telemetry: str) -> dict:
    observability, level = TELEMETRY[telemetry]
    out = {
        "listen": {"host": HOST, "port": listen},
        "log_level": level,
        "limits": {"max_inflight": 4096, "max_inflight_per_worker": 4096},
        "pools": [{"name": "relay", "kind": "replicas", "models": [MODEL], "workers": [f"http://{HOST}:{upstream}"]}],
    }
    if observability:  # a baseline checkout may predate the section
        out["observability"] = observability
    if telemetry == "traced":
        out["tracing"] = {"otlp_endpoint": f"http://{HOST}:{listen + 1}/v1/traces", "export_interval_s": 1}
    return out


def _serve_module(checkout: str | None) -> str:
    """The module of `pd-gateway serve` in this checkout or the baseline (older trees: gateway.cli)."""
    if checkout is None or os.path.isdir(os.path.join(checkout, "pdcli")):
        return "pdcli"
    return "gateway.cli"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_variant", description=__doc__)
    p.add_argument("--telemetry", choices=sorted(TELEMETRY), required=True)
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", type=int, required=True)
    p.add_argument("--checkout", help="with --telemetry baseline: the other checkout's directory")
    args = p.parse_args(argv)
    if (args.telemetry == "baseline") != (args.checkout is not None):
        p.error("--checkout goes with --telemetry baseline, and only with it")
    fd, path = tempfile.mkstemp(prefix="pd-gateway-variant-", suffix=".yaml")
    os.write(fd, (json.dumps(config(args.listen, args.upstream, args.telemetry)) + "\n").encode())
    os.close(fd)
    env = dict(os.environ)
    if args.telemetry == "traced":  # the sink outlives this exec and exits with the gateway
        subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", "--port", str(args.listen + 1)])
    if args.checkout:  # `-m` imports from the working directory first: the baseline's packages
        os.chdir(args.checkout)
        env["PYTHONPATH"] = args.checkout
    os.execve(sys.executable, [sys.executable, "-m", _serve_module(args.checkout), "serve", "--config", path], env)


if __name__ == "__main__":
    main()
