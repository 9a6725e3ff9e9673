"""Gauges read from the pools and the admission queue at scrape time, not kept up to date per request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..limits import Admission
from ..pool import Endpoint, Pool

_P = "pd_gateway_"
_LABELS = ["pool", "role", "endpoint"]
# (name, help, value of an endpoint at time `now` on the loop clock)
_ENDPOINT_GAUGES: list[tuple[str, str, Callable[[Endpoint, float], float]]] = [
    (
        "endpoint_healthy",
        "1 when the worker passes its health checks and is not ejected.",
        lambda e, now: float(e.healthy),
    ),
    (
        "endpoint_ejected",
        "1 while the worker is ejected for consecutive failures.",
        lambda e, now: float(e.ejected_until > now),
    ),
    ("endpoint_draining", "1 while an admin has the worker draining.", lambda e, now: float(e.draining)),
    ("endpoint_outstanding_requests", "Requests in flight on the worker.", lambda e, now: float(e.outstanding)),
    (
        "endpoint_outstanding_prompt_tokens",
        "Estimated prompt tokens in flight on the worker (prefill load).",
        lambda e, now: float(e.outstanding_tokens),
    ),
]


class PoolStateCollector(Collector):
    def __init__(self, pools: Sequence[Pool], admission: Admission) -> None:
        self.pools = pools
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        inflight = GaugeMetricFamily(_P + "inflight_requests", "Requests admitted and not yet finished.")
        inflight.add_metric([], self.admission.inflight)
        yield inflight
        queued = GaugeMetricFamily(_P + "queued_requests", "Requests waiting in the admission queue.")
        queued.add_metric([], self.admission.queued)
        yield queued
        ready = GaugeMetricFamily(
            _P + "pool_ready",
            "1 while the pool can serve: each role has a healthy worker (nixl PD, decode-local fallback: a decode).",
            labels=["pool"],
        )
        for pool in self.pools:
            ready.add_metric([pool.name], float(pool.ready))
        yield ready
        now = time.monotonic()  # the event loop's clock (ejected_until is loop time)
        endpoints = [e for p in self.pools for e in p.endpoints]
        for name, doc, value in _ENDPOINT_GAUGES:
            family = GaugeMetricFamily(_P + name, doc, labels=_LABELS)
            for e in endpoints:
                family.add_metric([e.pool, e.role, e.url], value(e, now))
            yield family
