"""A finished request's spans, built from its recorded times, exported by the OpenTelemetry
SDK (batched, on the SDK's own thread) over OTLP/HTTP. Needs the `tracing` extra.

    request  (SERVER; the client's span as parent)
    ├── queue          arrival → admitted (when it waited; else `pd_gateway.queue_ms` on the request)
    ├── prefill        each attempt on a prefill worker (a retry: a span of its own)
    ├── kv_handoff     prefill answered → decode's first event (PD pools)
    └── decode|replica each attempt; its span id is the parent the worker saw in `traceparent`

Nothing here runs before the response is over; spans that do not fit the SDK's queue are
dropped rather than held.
"""

from __future__ import annotations

import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from ..config import Tracing
from .spans import Attempt
from .trace import Trace

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK, _ERROR = Status(StatusCode.OK), Status(StatusCode.ERROR)
# Admitted within this long, a request did not wait in the queue: its queue time is an attribute
# of the request's span, not a span (each span costs the SDK ~30 us of CPU to build and encode).
_QUEUED = 0.0005


class OtlpExport:
    def __init__(self, config: Tracing) -> None:
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=dict(config.headers), timeout=10)
        self.processor = BatchSpanProcessor(
            exporter, max_queue_size=config.max_queue, schedule_delay_millis=config.export_interval_s * 1000
        )
        self.resource = Resource.create({"service.name": config.service_name})

    def spans(self, t: Trace, end: float) -> None:
        """Hand the request's spans to the batch processor (`end`: its end, monotonic)."""
        log = t.spans
        assert log is not None
        # Monotonic times as wall-clock nanoseconds, one offset for the whole request.
        offset = time.time() - time.monotonic()
        ns = lambda at: int((at + offset) * 1e9)  # noqa: E731
        trace_id = int(log.trace_id, 16)
        root = SpanContext(trace_id, int(log.span_id, 16), False, _SAMPLED)
        parent = None if log.parent_id is None else SpanContext(trace_id, int(log.parent_id, 16), True, _SAMPLED)
        ok = t.outcome == "success"
        on_end = self.processor.on_end
        on_end(
            self._span(_request_name(t), root, parent, t.start, end, _request_attributes(t), ok, ns, SpanKind.SERVER)
        )
        if t.admitted_at is not None and t.admitted_at - t.start > _QUEUED:  # it waited: a span of its own
            queue = SpanContext(trace_id, int(_child_id(log.span_id, 1), 16), False, _SAMPLED)
            on_end(self._span("queue", queue, root, t.start, t.admitted_at, {"pd_gateway.route": t.route}, True, ns))
        for a in log.attempts:
            ctx = SpanContext(trace_id, int(a.span_id, 16), False, _SAMPLED)
            attrs = _attempt_attributes(t, a)
            a_ok = a.outcome == "ok"
            on_end(self._span(a.role, ctx, root, a.start, a.end or end, attrs, a_ok, ns, SpanKind.CLIENT))
        if t.handoff is not None and t.prefill_done is not None and t.decode_first is not None:
            hand = SpanContext(trace_id, int(_child_id(log.span_id, 2), 16), False, _SAMPLED)
            attrs = {"pd_gateway.pool": t.pool, "pd_gateway.decode": t.endpoints.get("decode", "")}
            on_end(self._span("kv_handoff", hand, root, t.prefill_done, t.decode_first, attrs, True, ns))

    def _span(
        self,
        name: str,
        ctx: SpanContext,
        parent: SpanContext | None,
        start: float,
        end: float,
        attributes: dict[str, AttributeValue],
        ok: bool,
        ns,  # noqa: ANN001
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> ReadableSpan:
        return ReadableSpan(
            name,
            context=ctx,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            kind=kind,
            status=_OK if ok else _ERROR,
            start_time=ns(start),
            end_time=ns(end),
        )

    def flush(self, timeout_s: float) -> bool:
        return self.processor.force_flush(int(timeout_s * 1000))

    def close(self) -> None:
        self.processor.shutdown()


def _child_id(span_id: str, n: int) -> str:
    """A span id derived from the request's (queue, hand-off): no random number needed."""
    return f"{(int(span_id, 16) ^ (n << 56)) or n:016x}"


def _request_name(t: Trace) -> str:
    return f"POST /v1/{t.route}"


def _request_attributes(t: Trace) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        "http.route": f"/v1/{t.route}",
        "http.response.status_code": t.status,
        "pd_gateway.request_id": t.request_id,
        "pd_gateway.outcome": t.outcome,
        "pd_gateway.stream": t.stream,
        "pd_gateway.retries": t.retries,
        "pd_gateway.replays": t.replays,
    }
    if t.queued is not None:
        attrs["pd_gateway.queue_ms"] = round(t.queued * 1000, 3)
    if t.pool:
        attrs["pd_gateway.pool"] = t.pool
        attrs["gen_ai.request.model"] = t.model
    if t.prompt_tokens is not None:
        attrs["gen_ai.usage.input_tokens"] = t.prompt_tokens
    if t.completion_tokens is not None:
        attrs["gen_ai.usage.output_tokens"] = t.completion_tokens
    return attrs


def _attempt_attributes(t: Trace, a: Attempt) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        "pd_gateway.pool": t.pool,
        "pd_gateway.endpoint": a.endpoint,
        "gen_ai.request.model": t.model,
        "pd_gateway.outcome": a.outcome or t.outcome,
    }
    usage = a.usage or {}
    for key, name in (
        ("prompt_tokens", "gen_ai.usage.input_tokens"),
        ("completion_tokens", "gen_ai.usage.output_tokens"),
    ):
        value = usage.get(key)
        if isinstance(value, int):
            attrs[name] = value
    return attrs
