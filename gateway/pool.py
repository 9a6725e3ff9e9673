"""Endpoints (workers) and pools, with their health and load."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .config import PoolConfig
from .policies import Policy, make_policy

Role = Literal["replica", "prefill", "decode"]


@dataclass(eq=False)
class Endpoint:
    url: str
    role: Role
    pool: str
    healthy: bool = False  # unknown until the first health check passes
    outstanding: int = 0  # requests in flight
    outstanding_tokens: int = 0  # prompt tokens in flight (prefill load)
    models: list[dict] = field(default_factory=list)  # last /v1/models "data"
    model_ids: frozenset[str] = frozenset()  # their ids, looked up on every request
    passes: int = 0  # consecutive health-check passes
    failures: int = 0  # consecutive health-check failures
    errors: int = 0  # consecutive failed requests (outlier detection)
    ejections: int = 0  # times ejected so far; each ejection lasts longer
    ejected_until: float = 0.0  # loop time; health checks cannot restore it before
    draining: bool = False  # set by an admin: no new requests, in-flight ones finish
    leaving: Callable[[Endpoint], None] | None = None  # set when it left its pool: called once idle
    # From the worker's /metrics (gateway.worker_metrics), 0 until polled:
    foreign: int = 0  # requests running or waiting there beyond this gateway's own
    kv_usage: float = 0.0  # fraction of its KV cache in use
    cache_tokens: int = 0  # its KV cache's capacity in tokens (vllm:cache_config_info), 0: unknown

    def acquire(self, tokens: int = 0) -> None:
        self.outstanding += 1
        self.outstanding_tokens += tokens

    def release(self, tokens: int = 0) -> None:
        self.outstanding -= 1
        self.outstanding_tokens -= tokens
        if self.leaving is not None and self.outstanding <= 0:
            self.leaving(self)

    @property
    def routable(self) -> bool:
        """New requests may go here: healthy and not drained (balancer.choose's test)."""
        return self.healthy and not self.draining

    def set_models(self, cards: list[dict]) -> None:
        self.models = cards
        self.model_ids = frozenset(c["id"] for c in cards)


class Pool:
    """A set of endpoints serving the same models: plain replicas, or prefill + decode."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.name = config.name
        self.kind = config.kind
        self.protocol = config.protocol
        # Discovered pools start empty and get their members from discovery (set_members).
        if config.kind == "replicas":
            self.groups: dict[Role, list[Endpoint]] = {
                "replica": [Endpoint(u, "replica", self.name) for u in config.workers]
            }
        else:
            self.groups = {
                "prefill": [Endpoint(u, "prefill", self.name) for u in config.prefill],
                "decode": [Endpoint(u, "decode", self.name) for u in config.decode],
            }

        self.policies: dict[Role, Policy] = {}
        for role in self.groups:
            spec = config.policy_for(role)
            self.policies[role] = make_policy(spec.name, role, spec.options())

    def set_members(self, role: Role, urls: list[str]) -> list[Endpoint]:
        """Make `role`'s endpoints these URLs (service discovery); returns the new ones.

        A new endpoint gets requests once a health check passes. One that is no longer listed
        drains: no new requests, and it leaves the group when its last one finishes.
        """
        group = self.groups.setdefault(role, [])
        wanted = set(urls)
        for ep in group:
            if ep.url in wanted and ep.leaving is not None:  # back before it had drained
                ep.draining, ep.leaving = False, None
            elif ep.url not in wanted and ep.leaving is None:
                ep.draining, ep.leaving = True, self._depart
        known = {ep.url for ep in group}
        added = [Endpoint(u, role, self.name) for u in urls if u not in known]
        group.extend(added)
        for ep in [e for e in group if e.leaving is not None and e.outstanding <= 0]:
            self._depart(ep)
        return added

    def _depart(self, ep: Endpoint) -> None:
        group = self.groups.get(ep.role, [])
        if ep in group:
            group.remove(ep)
            self.policies[ep.role].forget(ep)

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for group in self.groups.values() for e in group]

    @property
    def ready(self) -> bool:
        """Every role of the pool has at least one routable endpoint (healthy, not drained); a
        nixl PD pool with decode-local fallback needs only a decode (disagg.local)."""
        if self.protocol == "nixl" and self.config.decode_local_fallback:
            return any(e.routable for e in self.groups.get("decode", ()))
        return all(any(e.routable for e in group) for group in self.groups.values())

    def serves(self, model: str) -> bool:
        """A configured name, or one a worker lists (its model, or a LoRA adapter it loaded)."""
        if model in self.config.models:
            return True
        return any(model in e.model_ids for group in self.groups.values() for e in group)
