"""The gateway's shared state: pools and their endpoints, and the machinery every request uses."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from .access_log import AccessLog
from .config import GatewayConfig
from .errors import GatewayError
from .health import HealthChecker
from .http1 import header_lines
from .limits import Admission, Capacity
from .outlier import OutlierDetector
from .pool import Endpoint, Pool
from .telemetry import Telemetry
from .upstream import Upstream
from .watchdog import Watchdog
from .worker_metrics import WorkerMetricsPoller


def _pool_headers(pool: Pool) -> bytes:
    headers = {"content-type": "application/json"}
    if pool.config.api_key:
        headers["authorization"] = f"Bearer {pool.config.api_key}"
    return header_lines(headers)


class Gateway:
    """Pools by model, the upstream client, health checks, outlier ejection, admission, timers."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.pools = [Pool(p) for p in config.pools]
        self._headers = {p.name: _pool_headers(p) for p in self.pools}
        self.upstream = Upstream(config.timeouts)
        t = config.timeouts
        self.watchdog = Watchdog(period_s=min(1.0, t.first_byte_s / 4, t.between_chunks_s / 4))
        self.health = HealthChecker(lambda: self.endpoints, self.upstream, config.health)
        limits = config.limits
        self.admission = Admission(limits.max_inflight, limits.queue, limits.queue_timeout_s)
        obs = config.observability
        access = AccessLog(config.log_format) if obs.access_log else None
        self.telemetry = Telemetry(self.pools, self.admission, obs.request_metrics, access)
        self.outlier = OutlierDetector(config.outlier, self.group_of, self.telemetry)
        self.capacity = Capacity()
        self.worker_metrics = WorkerMetricsPoller(lambda: self.endpoints, self.upstream, config.worker_metrics)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """What runs while serving besides health checks and the watchdog: the /metrics poller
        and the policies' own tasks (e.g. KV-event subscribers)."""
        tasks = [self.worker_metrics.run()] if self.config.worker_metrics.enabled else []
        tasks += self.telemetry.background()
        for pool in self.pools:
            for role, policy in pool.policies.items():
                tasks += policy.background(pool.groups[role])
        return tasks

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for p in self.pools for e in p.endpoints]

    def group_of(self, ep: Endpoint) -> list[Endpoint]:
        return next(p for p in self.pools if p.name == ep.pool).groups[ep.role]

    def pool_for(self, model: str) -> Pool:
        for pool in self.pools:
            if pool.serves(model):
                return pool
        raise GatewayError(404, f"The model `{model}` does not exist.", "model_not_found", param="model")

    def worker_headers(self, pool: Pool, request_id: str) -> bytes:
        """The header lines of a request to one of the pool's workers."""
        return self._headers[pool.name] + b"x-request-id: %s\r\n" % request_id.encode("ascii")

    def model_cards(self) -> list[dict]:
        seen: dict[str, dict] = {}
        for pool in self.pools:
            for card in pool.model_cards():
                seen.setdefault(card["id"], card)
        return list(seen.values())

    @property
    def ready(self) -> bool:
        """At least one pool can serve (each of its roles has a healthy endpoint)."""
        return any(pool.ready for pool in self.pools)
