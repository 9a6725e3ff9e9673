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

from .config import WorkerMetrics
from .metrics_page import MetricsPage, label
from .pool import Endpoint
from .upstream import Upstream

log = logging.getLogger("pd_gateway.worker_metrics")

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"  # a fraction, 0 to 1, despite its name
CACHE_CONFIG = "vllm:cache_config_info"  # a gauge of 1 whose labels carry the KV cache's size


@dataclass(frozen=True)
class WorkerReport:
    running: int
    waiting: int
    kv_usage: float
    cache_tokens: int = 0  # KV cache capacity in tokens (num_gpu_blocks x block_size), 0: not reported

    @property
    def requests(self) -> int:
        return self.running + self.waiting


def parse_report(body: bytes | str) -> WorkerReport | None:
    """The load in a /metrics page (summed over engines; KV usage the fullest engine's), and the
    KV cache's capacity (summed over engines); None when the page has no vLLM load gauges.

    Only the lines of these four metrics are read (metrics_page.MetricsPage), not the page."""
    page = MetricsPage(body.encode() if isinstance(body, str) else body)
    running, waiting = page.values(RUNNING), page.values(WAITING)
    if not running and not waiting:
        return None
    usage = max(page.values(KV_USAGE), default=0.0)
    return WorkerReport(int(sum(running)), int(sum(waiting)), usage, cache_tokens(page))


def cache_tokens(page: MetricsPage) -> int:
    """Tokens of KV cache over the page's engines, from vLLM's `cache_config_info` labels."""
    total = 0
    for line in page.lines(CACHE_CONFIG):
        try:
            total += int(label(line, "num_gpu_blocks") or "") * int(label(line, "block_size") or "")
        except ValueError:  # not sized yet ("None"), or an older vLLM
            continue
    return total


def fold(ep: Endpoint, report: WorkerReport | None, own: int) -> None:
    """Record a report taken while the gateway had `own` requests on the worker."""
    if report is None:
        ep.foreign, ep.kv_usage = 0, 0.0
        return
    ep.foreign = max(0, report.requests - own)
    ep.kv_usage = report.kv_usage
    if report.cache_tokens:  # kept when a page leaves it out: the size does not change while serving
        ep.cache_tokens = report.cache_tokens


class WorkerMetricsPoller:
    def __init__(self, endpoints: Callable[[], list[Endpoint]], upstream: Upstream, config: WorkerMetrics) -> None:
        self.endpoints = endpoints  # read each round: discovery adds and removes endpoints
        self.upstream = upstream
        self.config = config
        self._failing: set[str] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await self.poll_all()
            await asyncio.sleep(max(0.0, start + self.config.interval_s - loop.time()))

    async def poll_all(self) -> None:
        """One round: the endpoints' polls start spread evenly over the interval, so their pages
        arrive one by one rather than all in one turn of the event loop (256 workers: one every
        4 ms at the default 1 s)."""
        endpoints = self.endpoints()
        loop = asyncio.get_running_loop()
        step = self.config.interval_s / max(1, len(endpoints))
        start = loop.time()
        polls: list[asyncio.Future[None]] = []
        try:
            for i, ep in enumerate(endpoints):
                wait = start + i * step - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                polls.append(asyncio.ensure_future(self.poll(ep)))
            await asyncio.gather(*polls)
        finally:  # stopped mid-round: no poll outlives it
            for poll in polls:
                poll.cancel()

    async def poll(self, ep: Endpoint) -> None:
        own = ep.outstanding
        try:
            status, body = await self.upstream.get(ep.url + "/metrics", self.config.timeout_s)
            report = parse_report(body) if status == 200 else None
        except Exception as err:  # an unreadable page only means no report
            if ep.url not in self._failing:
                log.info("no load report from %s/metrics: %r", ep.url, err)
                self._failing.add(ep.url)
            report = None
        else:
            self._failing.discard(ep.url)
        fold(ep, report, own)
