"""The router: pools by model, endpoint choice, and the shared upstream machinery."""

from __future__ import annotations

import logging

from .config import GatewayConfig
from .errors import GatewayError
from .health import HealthChecker
from .metrics import Metrics
from .policy import Policy, least_loaded
from .pool import Endpoint, Pool, Role
from .upstream import Upstream
from .watchdog import Watchdog

log = logging.getLogger("pd_gateway")

RETRY_AFTER_S = "1"


def _requests(ep: Endpoint) -> int:
    return ep.outstanding


def _prompt_tokens(ep: Endpoint) -> int:
    return ep.outstanding_tokens


class Router:
    def __init__(self, config: GatewayConfig, retries: int = 2) -> None:
        self.config = config
        self.retries = retries
        self.pools = [Pool(p) for p in config.pools]
        self.upstream = Upstream(config.timeouts)
        self.watchdog = Watchdog(period_s=min(1.0, config.timeouts.between_chunks_s / 4))
        self.health = HealthChecker(
            [e for p in self.pools for e in p.endpoints], self.upstream, config.health
        )
        self.metrics = Metrics()
        self.policy: Policy = least_loaded
        # Prefill is compute-bound on the prompt; decode is bound by concurrent sequences.
        self.load_of = {"prefill": _prompt_tokens, "decode": _requests, "replica": _requests}

    def pool_for(self, model: str) -> Pool:
        for pool in self.pools:
            if pool.serves(model):
                return pool
        raise GatewayError(404, f"The model `{model}` does not exist.", "model_not_found")

    def choose(self, pool: Pool, role: Role, exclude: set[Endpoint] | frozenset = frozenset()) -> Endpoint:
        candidates = [e for e in pool.healthy(role) if e not in exclude]
        if not candidates:
            raise GatewayError(
                503,
                f"no healthy {role} worker in pool '{pool.name}'",
                "no_healthy_worker",
                headers={"retry-after": RETRY_AFTER_S},
            )
        load = self.load_of[role]
        cursor = pool.ties.get(role, 0)
        pool.ties[role] = cursor + 1
        index = self.policy([load(e) for e in candidates], cursor)
        return candidates[index]

    def eject(self, ep: Endpoint, reason: str) -> None:
        """A worker refused a connection: stop routing to it until health checks pass again."""
        if ep.healthy:
            log.warning("ejecting %s (%s/%s): %s", ep.url, ep.pool, ep.role, reason)
        ep.healthy = False
        ep.passes = 0
        self.metrics.inc("pd_gateway_ejections_total", endpoint=ep.url)

    def model_cards(self) -> list[dict]:
        seen: dict[str, dict] = {}
        for pool in self.pools:
            for card in pool.model_cards():
                seen.setdefault(card["id"], card)
        return list(seen.values())

    @property
    def ready(self) -> bool:
        return all(pool.ready for pool in self.pools)
