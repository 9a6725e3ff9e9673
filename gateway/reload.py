"""Changes without a restart: a new config (pools, endpoints, keys, tenants, limits, timeouts,
retries, health, outlier ejection) swapped into the running gateway at once.

The swap is one synchronous step on the event loop, so a request sees the old config or the
new one, never half of each. A request in flight keeps what it started with: its pool object,
its legs' endpoint leases and its admission slot. What changes:

- a pool whose config is unchanged stays as it is (its policy's state, its endpoints);
- a pool whose only change is its endpoint lists keeps its policy: new endpoints join and are
  health-checked at once, removed ones drain (no new requests) and leave once idle;
- any other change builds the pool anew; endpoints it keeps (same role and URL) carry their
  health, load and ejection state over;
- a pool no longer listed stops taking requests; its streams in flight finish.

A config that does not validate is refused whole (ConfigError, naming the field) and the
running one is kept. Fields that only a restart can change (the listening socket, the
interpreter tuning, logging, telemetry) are refused the same way when they differ.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .config import ConfigError, GatewayConfig, PoolConfig, parse_config
from .pool import Endpoint, Pool

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("pd_gateway")
RESTART_ONLY = ("listen", "tuning", "log_level", "log_format", "observability", "tracing")
Source = Callable[[], GatewayConfig]  # reads the config again (the file and the command line)


class Reloader:
    def __init__(self, gateway: Gateway, source: Source | None = None) -> None:
        self.gateway = gateway
        self.source = source
        self.generation = 0  # configs applied since start
        self._tasks: dict[str, list[asyncio.Task]] = {}  # pool name -> its policies' background tasks
        self._checks: set[asyncio.Task] = set()

    def start(self) -> None:
        """Start the pools' background tasks (the policies' own, e.g. KV-event subscribers)."""
        for pool in self.gateway.pools:
            self._start_tasks(pool)

    def stop(self) -> None:
        for name in list(self._tasks):
            self._stop_tasks(name)
        for task in list(self._checks):
            task.cancel()

    def reload(self) -> dict:
        """Read the config from its source again and apply it."""
        if self.source is None:
            raise ConfigError("the gateway was started without a config file to read again")
        return self.apply(self.source())

    def apply_data(self, data: dict) -> dict:
        return self.apply(parse_config(data))

    def apply(self, new: GatewayConfig) -> dict:
        """Swap `new` in; returns what changed. Raises ConfigError and changes nothing when
        `new` changes a field that needs a restart or a discovered pool."""
        gw, old = self.gateway, self.gateway.config
        _refuse_restart_only(old, new)
        before = {p.name: p for p in gw.pools}
        _refuse_discovery_changes(before, new)
        known = {id(e) for p in gw.pools for e in p.endpoints}
        pools = [self._pool(before.get(c.name), c) for c in new.pools]
        kept = {id(p) for p in pools}
        # Everything below is plain assignment: no await, so no request sees half of it.
        gw.use(new, pools)
        for name, pool in before.items():
            if id(pool) not in kept:
                self._stop_tasks(name)
        for pool in pools:
            if id(pool) not in {id(p) for p in before.values()}:
                self._start_tasks(pool)
        fresh = [e for p in pools for e in p.endpoints if id(e) not in known]
        for ep in fresh:
            self._check(ep)
        self.generation += 1
        summary = {
            "generation": self.generation,
            "in_flight": gw.admission.inflight,  # requests that go on with what they started with
            "pools": [p.name for p in pools],
            "added_pools": sorted(set(p.name for p in pools) - set(before)),
            "removed_pools": sorted(set(before) - {p.name for p in pools}),
            "new_endpoints": [e.url for e in fresh],
        }
        log.info("config reloaded: %s", summary)
        return summary

    def _pool(self, old: Pool | None, config: PoolConfig) -> Pool:
        if old is None:
            return Pool(config)
        if old.config == config:
            return old
        if _same_but_members(old.config, config):
            old.config = config
            for role, urls in _members(config).items():
                old.set_members(role, urls)  # type: ignore[arg-type]
            return old
        pool = Pool(config)
        carried = {(e.role, e.url): e for e in old.endpoints}
        for group in pool.groups.values():
            group[:] = [carried.get((e.role, e.url), e) for e in group]
        return pool

    def _check(self, ep: Endpoint) -> None:
        task = asyncio.ensure_future(self.gateway.health.check(ep))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _start_tasks(self, pool: Pool) -> None:
        jobs: list[Coroutine[Any, Any, None]] = []
        for role, policy in pool.policies.items():
            jobs += policy.background(pool.groups[role])
        if jobs:
            self._tasks[pool.name] = [asyncio.ensure_future(job) for job in jobs]

    def _stop_tasks(self, name: str) -> None:
        for task in self._tasks.pop(name, []):
            task.cancel()


def _refuse_restart_only(old: GatewayConfig, new: GatewayConfig) -> None:
    changed = [f for f in RESTART_ONLY if getattr(old, f) != getattr(new, f)]
    if old.worker_metrics.enabled != new.worker_metrics.enabled:  # the poller runs or not from the start
        changed.append("worker_metrics.enabled")
    if changed:
        raise ConfigError(f"config field '{changed[0]}': changes only with a restart (the running value is kept)")


def _refuse_discovery_changes(before: dict[str, Pool], new: GatewayConfig) -> None:
    """Checked before any pool is touched: a refused config changes nothing."""
    for i, config in enumerate(new.pools):
        old = before.get(config.name)
        if old is None and config.discovery is not None:
            raise ConfigError(
                f"config field 'pools.{i}.discovery': a pool found by discovery is added only with a restart"
            )
        if old is not None and old.config != config and (old.config.discovery or config.discovery):
            raise ConfigError(
                f"config field 'pools.{i}.discovery': a pool found by discovery changes only with a restart"
            )


def _members(config: PoolConfig) -> dict[str, list[str]]:
    if config.kind == "replicas":
        return {"replica": config.workers}
    return {"prefill": config.prefill, "decode": config.decode}


def _same_but_members(a: PoolConfig, b: PoolConfig) -> bool:
    lists: dict[str, list[str]] = {"workers": [], "prefill": [], "decode": []}
    return a.model_copy(update=lists) == b.model_copy(update=lists)


def with_endpoint(config: GatewayConfig, pool: str, role: str, url: str, present: bool) -> dict:
    """The config's data with `url` added to (or removed from) `pool`'s `role` list."""
    data = config.model_dump(mode="json", exclude_unset=True)
    entry = next((p for p in data["pools"] if p["name"] == pool), None)
    if entry is None:
        raise ConfigError(f"config field 'pools': no pool named {pool!r}")
    kind = entry.get("kind", "replicas")
    key = {"replica": "workers", "prefill": "prefill", "decode": "decode"}.get(role)
    if key is None or (kind == "replicas") != (key == "workers"):
        roles = "replica" if kind == "replicas" else "prefill or decode"
        raise ConfigError(f"config field 'role': pool {pool!r} ({kind}) has endpoints of role {roles}")
    urls = [u.rstrip("/") for u in entry.get(key, [])]
    url = url.rstrip("/")
    if present and url not in urls:
        urls.append(url)
    elif not present:
        if url not in urls:
            raise ConfigError(f"config field 'url': pool {pool!r} has no {role} endpoint {url}")
        urls.remove(url)
    entry[key] = urls
    return data
