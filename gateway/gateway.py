"""The gateway's shared state: pools and their endpoints, and the machinery every request uses."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from .access_log import AccessLog
from .aliases import ModelNames
from .cleanups import Cleanups
from .config import GatewayConfig
from .errors import GatewayError
from .health import HealthChecker
from .http1 import header_lines
from .limits import Capacity, FrontDoor
from .logs import clip
from .models_list import model_cards
from .outlier import OutlierDetector
from .pool import Endpoint, Pool
from .reload import Reloader
from .response_homes import ResponseHomes
from .telemetry import Telemetry, Tracing
from .telemetry.tenant_state import TenantCollector
from .tenants import TenantAdmission
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
        self.admission = TenantAdmission(config)  # limits.max_inflight, the queue, the tenants' budgets
        self.tenants = self.admission
        limits = config.limits  # the front door's caps hold until a restart (reload keeps them)
        self.front = FrontDoor(limits.max_connections, limits.max_buffered_body_bytes)
        obs = config.observability
        access = AccessLog(config.log_format) if obs.access_log else None
        self.tracing = Tracing(config.tracing)
        self.telemetry = Telemetry(self.pools, self.admission, obs.request_metrics, access, self.tracing)
        self.telemetry.registry.register(TenantCollector(self.admission))
        self._per_request = self.telemetry.enabled
        # Tenants' token budgets and shares count from each request's usage: its trace.
        self.telemetry.enabled = self._per_request or bool(config.tenants)
        self.outlier = OutlierDetector(config.outlier, self.group_of, self.telemetry)
        self.capacity = Capacity()
        self.cleanups = Cleanups()  # work a request leaves behind (a prefill's KV lease to give back)
        self.responses = ResponseHomes()
        self.names = ModelNames(config.aliases)
        self.started = int(time.time())  # the `created` of the model entries the gateway makes
        self.worker_metrics = WorkerMetricsPoller(lambda: self.endpoints, self.upstream, config.worker_metrics)
        self.reloader = Reloader(self)  # changes without a restart (gateway.reload)

    def use(self, config: GatewayConfig, pools: list[Pool]) -> None:
        """Serve new requests with `config` and `pools` (gateway.reload builds them); requests
        in flight keep the pools and endpoints they hold."""
        self.config, self.pools = config, pools
        self._headers = {p.name: _pool_headers(p) for p in pools}
        self.telemetry.state.pools = pools
        self.health.config, self.outlier.config, self.worker_metrics.config = (
            config.health,
            config.outlier,
            config.worker_metrics,
        )
        self.upstream.timeouts = config.timeouts
        self.upstream.pool.connect_timeout_s = config.timeouts.connect_s
        self.admission.configure(config)
        self.telemetry.enabled = self._per_request or bool(config.tenants)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """What runs while serving besides health checks and the watchdog: the clean-ups' owner and
        the /metrics poller (the policies' own tasks, e.g. KV-event subscribers, are the reloader's:
        they follow the pools)."""
        tasks = [self.cleanups.run()]
        if self.config.worker_metrics.enabled:
            tasks.append(self.worker_metrics.run())
        tasks += self.telemetry.background()
        return tasks

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for p in self.pools for e in p.endpoints]

    def group_of(self, ep: Endpoint) -> list[Endpoint]:
        pool = next((p for p in self.pools if p.name == ep.pool), None)
        return pool.groups[ep.role] if pool is not None else [ep]  # a pool reloaded away

    def pool_for(self, model: str) -> Pool:
        """The pool serving `model`; no model (where vLLM takes none): the only pool."""
        if not model and len(self.pools) == 1:
            return self.pools[0]
        for pool in self.pools:
            if pool.serves(model):
                return pool
        raise GatewayError(404, f"The model `{clip(model)}` does not exist.", "model_not_found", param="model")

    def worker_headers(self, pool: Pool, request_id: str, content_type: bytes | None = None) -> bytes:
        """The header lines of a request to one of the pool's workers (JSON, unless a form's
        `content_type` is given)."""
        head = self._headers.get(pool.name) or _pool_headers(pool)  # (a pool reloaded away)
        if content_type is not None:
            head = head.replace(b"content-type: application/json\r\n", b"content-type: %s\r\n" % content_type)
        return head + b"x-request-id: %s\r\n" % request_id.encode("ascii")

    def model_cards(self) -> list[dict]:
        return model_cards(self.pools, self.config.aliases, self.started)

    @property
    def ready(self) -> bool:
        """At least one pool can serve (each of its roles has a healthy, undrained endpoint)."""
        return any(pool.ready for pool in self.pools)
