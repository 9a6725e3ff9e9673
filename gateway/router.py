"""The router: pools by model, endpoint choice, outlier ejection, shared machinery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from .config import GatewayConfig
from .errors import GatewayError
from .health import HealthChecker
from .http1 import header_lines
from .limits import Admission, Capacity
from .metrics import Metrics
from .policies import RoutingRequest
from .pool import Endpoint, Pool, Role
from .upstream import Upstream
from .watchdog import Watchdog
from .worker_metrics import WorkerMetricsPoller

log = logging.getLogger("pd_gateway")


class Saturated(Exception):
    """Healthy workers exist but all are at their in-flight limit."""


def _pool_headers(pool: Pool) -> bytes:
    headers = {"content-type": "application/json"}
    if pool.config.api_key:
        headers["authorization"] = f"Bearer {pool.config.api_key}"
    return header_lines(headers)


class Router:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.pools = [Pool(p) for p in config.pools]
        self._headers = {p.name: _pool_headers(p) for p in self.pools}
        self.upstream = Upstream(config.timeouts)
        t = config.timeouts
        self.watchdog = Watchdog(period_s=min(1.0, t.first_byte_s / 4, t.between_chunks_s / 4))
        self.health = HealthChecker(self.endpoints, self.upstream, config.health)
        self.metrics = Metrics()
        limits = config.limits
        self.admission = Admission(limits.max_inflight, limits.queue, limits.queue_timeout_s)
        self.capacity = Capacity()
        self.worker_metrics = WorkerMetricsPoller(self.endpoints, self.upstream, config.worker_metrics)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """What must run while serving besides health checks: the /metrics poller and the
        policies' own tasks (e.g. KV-event subscribers)."""
        tasks = [self.worker_metrics.run()] if self.config.worker_metrics.enabled else []
        for pool in self.pools:
            for role, policy in pool.policies.items():
                tasks += policy.background(pool.groups[role])
        return tasks

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for p in self.pools for e in p.endpoints]

    def pool_for(self, model: str) -> Pool:
        for pool in self.pools:
            if pool.serves(model):
                return pool
        raise GatewayError(404, f"The model `{model}` does not exist.", "model_not_found")

    def choose(self, pool: Pool, role: Role, request: RoutingRequest,
               exclude: set[Endpoint] | frozenset = frozenset()) -> Endpoint:
        """An endpoint of `pool` for `request` in `role`, by the role's policy, among the healthy,
        undrained ones below their in-flight limit and not in `exclude`."""
        limit = self.config.limits.max_inflight_per_worker
        candidates, available = [], False
        for e in pool.groups.get(role, ()):
            if e.healthy and not e.draining and e not in exclude:
                available = True
                if e.outstanding < limit:
                    candidates.append(e)
        if not candidates:
            if available:
                raise Saturated()
            raise GatewayError(
                503, f"no healthy {role} worker in pool '{pool.name}'", "no_healthy_worker",
                headers={"retry-after": "1"},
            )
        policy = pool.policies[role]
        chosen = policy.choose(request, candidates)
        policy.routed(request, chosen)
        return chosen

    def worker_headers(self, pool: Pool, request_id: str) -> bytes:
        """The header lines of a request to one of the pool's workers."""
        return self._headers[pool.name] + b"x-request-id: %s\r\n" % request_id.encode("latin-1")

    # Outlier ejection -------------------------------------------------------

    def succeeded(self, ep: Endpoint) -> None:
        ep.errors = 0

    def failed(self, ep: Endpoint, reason: str, eject_now: bool = False) -> None:
        ep.errors += 1
        self.metrics.inc("pd_gateway_upstream_failures_total", endpoint=ep.url)
        if eject_now or ep.errors >= self.config.outlier.consecutive_failures:
            self.eject(ep, reason)

    def eject(self, ep: Endpoint, reason: str) -> None:
        """Stop routing to `ep` for a while; health checks bring it back afterwards."""
        cfg = self.config.outlier
        now = asyncio.get_running_loop().time()
        group = next(p for p in self.pools if p.name == ep.pool).groups[ep.role]
        ejected = sum(1 for e in group if e.ejected_until > now)
        if ep.ejected_until > now:
            return
        if (ejected + 1) * 100 > cfg.max_ejection_percent * len(group):
            log.warning("not ejecting %s (%s): over %d%% of its group would be out", ep.url, reason,
                        cfg.max_ejection_percent)
            return
        duration = min(cfg.base_ejection_s * 2**ep.ejections, cfg.max_ejection_s)
        ep.ejections += 1
        ep.errors = 0
        ep.ejected_until = now + duration
        ep.healthy = False
        ep.passes = 0
        log.warning("ejecting %s (%s/%s) for %gs: %s", ep.url, ep.pool, ep.role, duration, reason)
        self.metrics.inc("pd_gateway_ejections_total", endpoint=ep.url)

    # Views -------------------------------------------------------------------

    def model_cards(self) -> list[dict]:
        seen: dict[str, dict] = {}
        for pool in self.pools:
            for card in pool.model_cards():
                seen.setdefault(card["id"], card)
        return list(seen.values())

    @property
    def ready(self) -> bool:
        return all(pool.ready for pool in self.pools)
