"""Metrics and the access log of one gateway: the narrow API the request path calls.

    trace = telemetry.start(request_id, route)   # None when per-request telemetry is off
    ...the request path fills the trace in (see Trace)...
    telemetry.finish(trace, status, outcome)     # once, at the request's very end

Rare events (retries, replays, upstream failures, ejections) are counted
by their own calls; gauges (in flight, queued, per endpoint) are read from the pools at scrape
time.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

from ..limits import Admission
from ..pool import Endpoint, Pool
from .families import Families
from .shared import SharedState, shared_dir
from .state import PoolStateCollector
from .trace import Trace, usage_of
from .tracing import Tracing

__all__ = ["CONTENT_TYPE_LATEST", "Telemetry", "Trace", "Tracing", "outcome_of", "usage_of"]

RECENT = 32  # latencies kept per endpoint for the status page


def outcome_of(status: int) -> str:
    """The outcome of a request answered with `status` (a stream's own outcome is the relay's to say)."""
    if status < 400:
        return "success"
    if status == 499:
        return "client_disconnect"
    if status == 429:
        return "overloaded"
    if status < 500:
        return "client_error"
    if status == 503:
        return "unavailable"
    return "upstream_error"


class Telemetry:
    def __init__(
        self,
        pools: Sequence[Pool],
        admission: Admission,
        request_metrics: bool = True,
        access_log: object | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`access_log`: something with `write(trace, total_s)` (gateway.access_log.AccessLog), or None;
        `tracing`: exports the spans of each finished request when it is on."""
        self.registry = CollectorRegistry()
        self.families = Families(self.registry)
        self.state = PoolStateCollector(pools, admission)  # its pools follow a reload
        directory = shared_dir()  # one of several gateway processes (gateway/processes.py)
        self.shared = SharedState(directory, self.state) if directory else None
        if self.shared is None:
            self.registry.register(self.state)
        self.request_metrics = request_metrics
        self.access_log = access_log
        self.tracing = tracing if tracing is not None and tracing.on else None
        self.enabled = request_metrics or access_log is not None or self.tracing is not None
        self.recent: dict[str, deque[float]] = {}  # endpoint -> its last TTFTs (prefill: prefill times)
        self.outcomes: Counter[str] = Counter()  # requests by outcome, for the status page
        self.local: Counter[tuple[str, str]] = Counter()  # (pool, reason) -> decode-local requests, ditto
        self.resumed: Counter[tuple[str, str]] = Counter()  # (pool, outcome) -> mid-stream resumes, ditto
        self._children: dict[tuple, object] = {}  # (family name, *label values) -> its child

    def start(self, request_id: str, route: str) -> Trace | None:
        return Trace(request_id, route) if self.enabled else None

    def finish(self, trace: Trace | None, status: int, outcome: str | None = None) -> None:
        if trace is None:
            return
        end = time.monotonic()
        total = end - trace.start
        trace.status, trace.outcome = status, outcome or outcome_of(status)
        self.outcomes[trace.outcome] += 1
        if self.request_metrics:
            self._observe(trace, total)
        self._remember(trace)
        if self.access_log is not None:
            self.access_log.write(trace, total)  # type: ignore[attr-defined]
        if self.tracing is not None:
            self.tracing.finished(trace, end)

    def _child(self, family: MetricWrapperBase, *labels: str):  # noqa: ANN202 (a Counter or Histogram child)
        """`family.labels(*labels)`, looked up once: labels() validates and locks on every call."""
        key = (family._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def _observe(self, t: Trace, total: float) -> None:
        f, child = self.families, self._child
        # Refused before routing: the client's model name is no label value (it is unbounded).
        pool, model = (t.pool, t.model) if t.pool else ("", "")
        child(f.requests, pool, model, t.route, str(t.status), t.outcome).inc()
        if t.outcome == "client_disconnect":
            child(f.disconnects, t.route, "streaming" if t.status == 200 else "before_response").inc()
        child(f.e2e, pool, model, t.route).observe(total)
        if t.queued is not None:
            child(f.queue, t.route).observe(t.queued)
        if t.outcome != "success":
            return
        if t.stream and t.ttft is not None:
            child(f.ttft, pool, model, t.route).observe(t.ttft)
        if t.itl is not None:
            child(f.itl, pool, model, t.route).observe(t.itl)
        if t.prefill_time is not None:
            child(f.prefill, pool, model, t.endpoints.get("prefill", "")).observe(t.prefill_time)
        if t.handoff is not None:
            child(f.handoff, pool, model, t.endpoints.get("decode", "")).observe(t.handoff)
        if t.prompt_tokens:
            child(f.prompt_tokens, pool, model).inc(t.prompt_tokens)
        if t.completion_tokens:
            child(f.completion_tokens, pool, model).inc(t.completion_tokens)

    def _remember(self, t: Trace) -> None:
        if t.outcome != "success":
            return
        if t.prefill_time is not None:
            self._recent(t.endpoints["prefill"]).append(t.prefill_time)
        main = t.endpoints.get("decode") or t.endpoints.get("replica")
        if main is not None and t.stream and t.ttft is not None:
            self._recent(main).append(t.ttft)

    def _recent(self, endpoint: str) -> deque[float]:
        recent = self.recent.get(endpoint)
        if recent is None:
            recent = self.recent[endpoint] = deque(maxlen=RECENT)
        return recent

    # Rare events -----------------------------------------------------------------------

    def retried(self, trace: Trace | None, pool: str, role: str) -> None:
        self.families.retries.labels(pool, role).inc()
        if trace is not None:
            trace.retries += 1

    def replayed(self, trace: Trace | None, pool: str) -> None:
        self.families.replays.labels(pool).inc()
        if trace is not None:
            trace.replays += 1

    def decode_local(self, trace: Trace | None, pool: str, reason: str) -> None:
        """A PD request went to a decode alone (disagg.local's reasons)."""
        self.families.decode_local.labels(pool, reason).inc()
        self.local[pool, reason] += 1

    def resume(self, pool: str, outcome: str) -> None:
        """A stream broke mid-way: `resumed` on another worker, or `gave_up`."""
        self.families.resumes.labels(pool, outcome).inc()
        self.resumed[pool, outcome] += 1

    def upstream_failed(self, ep: Endpoint, kind: str) -> None:
        self.families.upstream_failures.labels(ep.pool, ep.role, ep.url, kind).inc()

    def ejected(self, ep: Endpoint) -> None:
        self.families.ejections.labels(ep.pool, ep.role, ep.url).inc()

    def exposition(self) -> bytes:
        if self.shared is not None:
            return self.shared.exposition()
        return generate_latest(self.registry)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """One of several processes: its gauges written for its siblings' scrapes."""
        return [self.shared.run()] if self.shared is not None else []
