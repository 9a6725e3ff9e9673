"""Polling the workers' own load from their Prometheus /metrics into the load score.

The gateway counts only its own requests in flight; several gateway replicas in front of
one fleet each see a part. vLLM (and workers/sim) report the whole: requests running and
waiting, and the fraction of the KV cache in use. What a worker reports beyond this
gateway's own requests becomes `Endpoint.foreign`, which policies add to their load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from .config import WorkerMetrics
from .pool import Endpoint
from .upstream import Upstream

log = logging.getLogger("pd_gateway.worker_metrics")

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"  # a fraction, 0 to 1, despite its name


@dataclass(frozen=True)
class WorkerReport:
    running: int
    waiting: int
    kv_usage: float

    @property
    def requests(self) -> int:
        return self.running + self.waiting


def parse_report(text: str) -> WorkerReport | None:
    """The load in a /metrics page (summed over engines; KV usage the fullest engine's),
    None when the page has no vLLM load gauges."""
    sums = {RUNNING: 0.0, WAITING: 0.0}
    usage, seen = 0.0, False
    for family in text_string_to_metric_families(text):
        if family.name in sums:
            seen = True
            sums[family.name] += sum(s.value for s in family.samples)
        elif family.name == KV_USAGE:
            usage = max((s.value for s in family.samples), default=0.0)
    if not seen:
        return None
    return WorkerReport(int(sums[RUNNING]), int(sums[WAITING]), usage)


def fold(ep: Endpoint, report: WorkerReport | None, own: int) -> None:
    """Record a report taken while the gateway had `own` requests on the worker."""
    if report is None:
        ep.foreign, ep.kv_usage = 0, 0.0
        return
    ep.foreign = max(0, report.requests - own)
    ep.kv_usage = report.kv_usage


class WorkerMetricsPoller:
    def __init__(self, endpoints: Callable[[], list[Endpoint]], upstream: Upstream, config: WorkerMetrics) -> None:
        self.endpoints = endpoints  # read each round: discovery adds and removes endpoints
        self.upstream = upstream
        self.config = config
        self._failing: set[str] = set()

    async def run(self) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(self.config.interval_s)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(e) for e in self.endpoints()))

    async def poll(self, ep: Endpoint) -> None:
        own = ep.outstanding
        try:
            status, body = await self.upstream.get(ep.url + "/metrics", self.config.timeout_s)
            report = parse_report(body.decode()) if status == 200 else None
        except Exception as err:  # an unreadable page only means no report
            if ep.url not in self._failing:
                log.info("no load report from %s/metrics: %r", ep.url, err)
                self._failing.add(ep.url)
            report = None
        else:
            self._failing.discard(ep.url)
        fold(ep, report, own)
