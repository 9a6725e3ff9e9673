"""The gateway itself as a reference relay, with its per-request telemetry set one way:

    python -m bench.gateway_variant --telemetry off --listen 9000 --upstream 8000
    python -m bench.gateway_variant --telemetry logged --listen 9000 --upstream 8000

`off`: no per-request metrics and no access log (`observability: {request_metrics: false,
access_log: false}`), what the gateway costs without them. `logged`: per-request metrics and
an access line per request actually written (log level info; the measured gateway runs at
warning, which skips the line). Both replace this process with `pd-gateway serve` (same PID,
heap on huge pages as usual), on a `replicas` pool in front of the upstream worker, with the
benchmark's own limits; the relay benchmark runs the same load through them as through the
gateway, so that the telemetry's cost per chunk is read off one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence

from .procs import HOST

MODEL = "sim-relay"  # bench.relay.RELAY_MODEL
TELEMETRY = {
    "off": ({"request_metrics": False, "access_log": False}, "warning"),
    "logged": ({"request_metrics": True, "access_log": True}, "info"),
}


def config(listen: int, upstream: int, telemetry: str) -> dict:
    observability, level = TELEMETRY[telemetry]
    return {
        "listen": {"host": HOST, "port": listen},
        "log_level": level,
        "observability": observability,
        "limits": {"max_inflight": 4096, "max_inflight_per_worker": 4096},
        "pools": [{"name": "relay", "kind": "replicas", "models": [MODEL], "workers": [f"http://{HOST}:{upstream}"]}],
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_variant", description=__doc__)
    p.add_argument("--telemetry", choices=sorted(TELEMETRY), required=True)
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", type=int, required=True)
    args = p.parse_args(argv)
    fd, path = tempfile.mkstemp(prefix="pd-gateway-variant-", suffix=".yaml")
    os.write(fd, (json.dumps(config(args.listen, args.upstream, args.telemetry)) + "\n").encode())
    os.close(fd)
    os.execv(sys.executable, [sys.executable, "-m", "pdcli", "serve", "--config", path])


if __name__ == "__main__":
    main()
