"""Tracing: every request joins the client's W3C trace (or starts one) and passes it on to
each leg; its spans go to an OTLP collector when `tracing.otlp_endpoint` is set.

With no endpoint nothing of OpenTelemetry is imported: a client's `traceparent` and
`tracestate` reach the workers as they came, so the workers' own spans still join the
client's trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..config import Tracing as TracingConfig
from .spans import SpanLog, passthrough
from .trace import Trace

if TYPE_CHECKING:
    from .otlp import OtlpExport


class Tracing:
    def __init__(self, config: TracingConfig) -> None:
        self.config = config
        self.on = config.otlp_endpoint is not None
        self.export: OtlpExport | None = None
        if self.on:
            from .otlp import OtlpExport

            self.export = OtlpExport(config)

    def join(self, trace: Trace | None, headers: Mapping[bytes, bytes]) -> bytes:
        """Start the request's trace. Returns the header lines every leg sends when the trace
        is not the gateway's own (tracing off); with tracing on each attempt gets its own."""
        if not self.on or trace is None:
            lines, trace_id = passthrough(headers)
            if trace is not None:
                trace.trace_id = trace_id  # for the access line
            return lines
        trace.spans = SpanLog(headers, self.config.sample_ratio)
        trace.trace_id = trace.spans.trace_id
        return b""

    def finished(self, trace: Trace, end: float) -> None:
        if self.export is not None and trace.spans is not None and trace.spans.sampled:
            self.export.spans(trace, end)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Send what is batched now (blocks: call it from a thread)."""
        return self.export.flush(timeout_s) if self.export is not None else True

    def close(self) -> None:
        """Send what is left and stop the exporter's thread (blocks)."""
        if self.export is not None:
            self.export.close()
