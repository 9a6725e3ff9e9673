"""CPU cost of the gateway's per-request telemetry, without sockets: what one request's trace
calls and its end (metrics, access line) cost, and what the relay pays per chunk for them.

    python -m bench.telemetry_cost [--requests 20000]

The relay benchmark measures the same thing end to end (its gw-off and gw-log references);
this isolates it from the machine's noise: best of 5 repeats of process CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import time
from collections.abc import Callable, Sequence

from gateway.access_log import AccessLog
from gateway.config import parse_config
from gateway.limits import Admission
from gateway.pool import Pool
from gateway.telemetry import Telemetry, usage_of

LAST = (
    b'data: {"id":"cmpl-1","object":"text_completion","choices":[],'
    b'"usage":{"prompt_tokens":12,"total_tokens":140,"completion_tokens":128}}\n\ndata: [DONE]\n\n'
)
PREV = b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" x"}]}\n\n'


def _telemetry(request_metrics: bool, access: AccessLog | None) -> Telemetry:
    config = parse_config(
        {
            "pools": [
                {"name": "dp", "workers": ["http://127.0.0.1:1"]},
                {
                    "name": "pd",
                    "kind": "pd",
                    "protocol": "nixl",
                    "disaggregate_min_tokens": 0,
                    "prefill": ["http://127.0.0.1:2"],
                    "decode": ["http://127.0.0.1:3"],
                },
            ]
        }
    )
    return Telemetry([Pool(p) for p in config.pools], Admission(10, 10, 1.0), request_metrics, access)


def one_request(t: Telemetry, pd: bool) -> None:
    trace = t.start("0123456789abcdef0123456789abcdef", "completions")
    if trace is None:
        return
    trace.admitted()
    trace.parsed("sim-model", True)
    trace.routed("pd" if pd else "dp")
    if pd:
        trace.leg_sent("prefill", "http://127.0.0.1:2")
        trace.leg_done("prefill", 0, {"prompt_tokens": 12})
    trace.leg_sent("decode" if pd else "replica", "http://127.0.0.1:3")
    trace.first_run("decode" if pd else "replica")
    trace.leg_done("decode" if pd else "replica", 130, usage_of(PREV, LAST))
    t.finish(trace, 200, "success")


def per_chunk(n: int, traced: bool) -> float:
    """The relay's per-run additions (leg.py's on_data), timed against the same loop without them."""

    class Leg:
        __slots__ = ("_last", "_prev", "trace")

    leg = Leg()
    leg._last, leg._prev, leg.trace = b"", b"", object() if traced else None
    run = PREV
    start = time.process_time()
    for _ in range(n):
        if not leg._last and leg.trace is not None:
            pass
        leg._prev = leg._last
        leg._last = run
    return time.process_time() - start


def best(fn: Callable[[], None], n: int) -> float:
    """Best of 5: CPU seconds per call."""
    times = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            fn()
        times.append(time.process_time() - start)
    return min(times) / n


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.telemetry_cost", description=__doc__)
    p.add_argument("--requests", type=int, default=20000)
    n = p.parse_args(argv).requests
    sink = logging.getLogger("pd_gateway.access")
    sink.propagate = False
    sink.addHandler(logging.StreamHandler(io.StringIO()))

    async def measure() -> None:  # inside a loop, like the gateway
        rows = []
        for label, metrics, access, level in [
            ("off (request_metrics and access_log false)", False, None, logging.WARNING),
            ("metrics, access log at warning (not written)", True, "text", logging.WARNING),
            ("metrics + text access line written", True, "text", logging.INFO),
            ("metrics + JSON access line written", True, "json", logging.INFO),
        ]:
            sink.setLevel(level)
            t = _telemetry(metrics, AccessLog(access) if access else None)  # type: ignore[arg-type]
            for pd in (False, True):
                rows.append((label, "pd" if pd else "dp", best(lambda t=t, pd=pd: one_request(t, pd), n)))
        for label, kind, sec in rows:
            print(f"{label:48s} {kind}: {sec * 1e6:7.2f} us per request")
        chunks = 10 * n
        extra = min(per_chunk(chunks, True) for _ in range(5)) / chunks
        print(f"relay per-run additions (first-run test, previous run kept): {extra * 1e9:.0f} ns per chunk")

    asyncio.run(measure())


if __name__ == "__main__":
    main()
