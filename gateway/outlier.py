"""Outlier ejection (passive health checking): workers that keep failing are taken out for a while."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .config import Outlier
from .pool import Endpoint
from .telemetry import Telemetry

log = logging.getLogger("pd_gateway")


class OutlierDetector:
    """Counts each endpoint's consecutive failed requests; at the threshold it is ejected for
    `base_ejection_s`, doubling with each repeat, never more than `max_ejection_percent` of its
    group at once. Active health checks bring it back once the time is over."""

    def __init__(self, config: Outlier, group_of: Callable[[Endpoint], list[Endpoint]], telemetry: Telemetry) -> None:
        self.config = config
        self.group_of = group_of
        self.telemetry = telemetry

    def succeeded(self, ep: Endpoint) -> None:
        ep.errors = 0

    def failed(self, ep: Endpoint, reason: str, kind: str, eject_now: bool = False) -> None:
        """A request failed through the worker's fault (never the client's: a 4xx is not counted);
        `kind`: connect, timeout, 5xx, broken_stream or invalid."""
        ep.errors += 1
        self.telemetry.upstream_failed(ep, kind)
        if eject_now or ep.errors >= self.config.consecutive_failures:
            self.eject(ep, reason)

    def eject(self, ep: Endpoint, reason: str) -> None:
        cfg = self.config
        now = asyncio.get_running_loop().time()
        if ep.ejected_until > now:
            return
        group = self.group_of(ep)
        ejected = sum(1 for e in group if e.ejected_until > now)
        if (ejected + 1) * 100 > cfg.max_ejection_percent * len(group):
            log.warning(
                "not ejecting %s (%s): over %d%% of its group would be out", ep.url, reason, cfg.max_ejection_percent
            )
            return
        duration = min(cfg.base_ejection_s * 2**ep.ejections, cfg.max_ejection_s)
        ep.ejections += 1
        ep.errors = 0
        ep.ejected_until = now + duration
        ep.healthy = False
        ep.passes = 0
        log.warning("ejecting %s (%s/%s) for %gs: %s", ep.url, ep.pool, ep.role, duration, reason)
        self.telemetry.ejected(ep)
