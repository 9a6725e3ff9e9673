"""Per-tenant counts and gauges, read from the admission's tenant states at scrape time.

Only configured tenants are labels (plus "" for the default tenant: keys of `auth.api_keys`,
or none), so the series are bounded by the config, not by the clients.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..tenants import TenantAdmission, TenantState

_P = "pd_gateway_tenant_"
REASONS = ("concurrency", "requests_per_minute", "tokens_per_minute", "queue_full", "queue_timeout")


class TenantCollector(Collector):
    def __init__(self, admission: TenantAdmission) -> None:
        self.admission = admission

    def states(self) -> list[TenantState]:
        return [*self.admission.states.values(), self.admission.default]

    def collect(self) -> Iterator[Metric]:
        states = self.states()
        admitted = CounterMetricFamily(_P + "requests", "Requests admitted, by tenant.", labels=["tenant"])
        rejected = CounterMetricFamily(
            _P + "rejected", "Requests refused with 429, by tenant and budget or queue.", labels=["tenant", "reason"]
        )
        tokens = CounterMetricFamily(
            _P + "tokens", "Prompt and completion tokens of finished requests, by tenant.", labels=["tenant", "kind"]
        )
        inflight = GaugeMetricFamily(_P + "inflight_requests", "Requests admitted and not finished.", labels=["tenant"])
        queued = GaugeMetricFamily(
            _P + "queued_requests", "Requests waiting in the admission queue.", labels=["tenant"]
        )
        for s in states:
            admitted.add_metric([s.name], s.admitted)
            for reason in REASONS:
                rejected.add_metric([s.name, reason], s.rejected[reason])
            tokens.add_metric([s.name, "prompt"], s.prompt_tokens)
            tokens.add_metric([s.name, "completion"], s.completion_tokens)
            inflight.add_metric([s.name], s.inflight)
            queued.add_metric([s.name], len(s.waiting))
        yield from (admitted, rejected, tokens, inflight, queued)
