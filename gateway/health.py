"""Active health checking: every endpoint's /health, with pass/fail thresholds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .config import HealthCheck
from .pool import Endpoint
from .upstream import Upstream

log = logging.getLogger("pd_gateway.health")


class HealthChecker:
    def __init__(self, endpoints: Callable[[], list[Endpoint]], upstream: Upstream, config: HealthCheck) -> None:
        self.endpoints = endpoints  # read each round: discovery adds and removes endpoints
        self.upstream = upstream
        self.config = config

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(e) for e in self.endpoints()))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            await self.check_all()

    async def check(self, ep: Endpoint) -> None:
        reason = "answered /health with a non-200 status"
        try:
            ok = await self.upstream.get_ok(ep.url + "/health", self.config.timeout_s)
            if ok:  # every check: adapters come and go (LoRA routing reads them)
                await self._refresh_or_keep(ep)
        except Exception as err:  # any failure to answer is a failed check
            reason, ok = repr(err), False
        self._record(ep, ok, reason)

    async def _refresh_or_keep(self, ep: Endpoint) -> None:
        """A worker's model list; one it failed to give now keeps the last (none yet: a failure)."""
        try:
            await self.refresh_models(ep)
        except Exception:
            if not ep.models:
                raise

    async def refresh_models(self, ep: Endpoint) -> None:
        ep.set_models(await self._models(ep))

    async def _models(self, ep: Endpoint) -> list[dict]:
        data = await self.upstream.get_json(ep.url + "/v1/models", self.config.timeout_s)
        cards = data.get("data") if isinstance(data, dict) else None
        return [c for c in cards or [] if isinstance(c, dict) and isinstance(c.get("id"), str)]

    def _record(self, ep: Endpoint, ok: bool, reason: str) -> None:
        if ok:
            ep.passes, ep.failures = ep.passes + 1, 0
            ejected = ep.ejected_until > asyncio.get_running_loop().time()
            if not ep.healthy and not ejected and ep.passes >= self.config.healthy_threshold:
                ep.healthy = True
                log.info("endpoint %s (%s/%s) is healthy", ep.url, ep.pool, ep.role)
        else:
            ep.passes, ep.failures = 0, ep.failures + 1
            if ep.healthy and ep.failures >= self.config.unhealthy_threshold:
                ep.healthy = False
                log.warning(
                    "endpoint %s (%s/%s) failed %d health checks in a row; last: %s",
                    ep.url,
                    ep.pool,
                    ep.role,
                    ep.failures,
                    reason,
                )
