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
from gateway.telemetry import Telemetry, Tracing, usage_of

LAST = (
    b'data: {"id":"cmpl-1","object":"text_completion","choices":[],'
    b'"usage":{"prompt_tokens":12,"total_tokens":140,"completion_tokens":128}}\n\ndata: [DONE]\n\n'
)
HEADERS = {b"traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
PREV = b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" x"}]}\n\n'


def _telemetry(request_metrics: bool, access: AccessLog | None, traced: bool = False) -> Telemetry:
    config = parse_config(
        {
            "tracing": {"otlp_endpoint": "http://127.0.0.1:9/v1/traces"} if traced else {},
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
            ],
        }
    )
    tracing = Tracing(config.tracing)
    if tracing.export is not None:  # spans encoded as OTLP sends them, not sent: no receiver's CPU counted
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracing.export.processor = BatchSpanProcessor(_EncodeOnly(), max_queue_size=1 << 16)
    return Telemetry([Pool(p) for p in config.pools], Admission(10, 10, 1.0), request_metrics, access, tracing)


def _encode_only() -> type:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class EncodeOnly(SpanExporter):
        def export(self, spans):  # noqa: ANN001, ANN201
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    return EncodeOnly


def _EncodeOnly():  # noqa: ANN202, N802
    return _encode_only()()


def one_request(t: Telemetry, pd: bool) -> None:
    trace = t.start("0123456789abcdef0123456789abcdef", "completions")
    if trace is None:
        return
    if t.tracing is not None:
        t.tracing.join(trace, HEADERS)
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


def best(fn: Callable[[], None], n: int, flush: Callable[[], object] = lambda: None) -> float:
    """Best of 5: CPU seconds per call (`flush`: work the calls left to another thread, counted)."""
    times = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            fn()
        flush()
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
        for label, metrics, access, level, traced in [
            ("off (request_metrics and access_log false)", False, None, logging.WARNING, False),
            ("metrics, access log at warning (not written)", True, "text", logging.WARNING, False),
            ("metrics + text access line written", True, "text", logging.INFO, False),
            ("metrics + JSON access line written", True, "json", logging.INFO, False),
            ("metrics + traced (spans built, OTLP-encoded)", True, "text", logging.WARNING, True),
        ]:
            sink.setLevel(level)
            t = _telemetry(metrics, AccessLog(access) if access else None, traced)  # type: ignore[arg-type]
            flush = t.tracing.flush if t.tracing is not None else (lambda: None)
            for pd in (False, True):
                rows.append((label, "pd" if pd else "dp", best(lambda t=t, pd=pd: one_request(t, pd), n, flush)))
        for label, kind, sec in rows:
            print(f"{label:48s} {kind}: {sec * 1e6:7.2f} us per request")
        chunks = 10 * n
        extra = min(per_chunk(chunks, True) for _ in range(5)) / chunks
        print(f"relay per-run additions (first-run test, previous run kept): {extra * 1e9:.0f} ns per chunk")

    asyncio.run(measure())


if __name__ == "__main__":
    main()
