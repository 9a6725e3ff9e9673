"""Endpoint choice: which endpoints may take a request, then the role's policy picks one."""

from __future__ import annotations

import asyncio

from .errors import GatewayError
from .policies import RoutingRequest
from .pool import Endpoint, Pool, Role


class Saturated(Exception):
    """Healthy workers exist but all are at their in-flight limit."""


def choose(
    pool: Pool,
    role: Role,
    request: RoutingRequest,
    per_worker_limit: int,
    exclude: set[Endpoint] | frozenset = frozenset(),
) -> Endpoint:
    """An endpoint of `pool` for `request` in `role`, by the role's policy, among the healthy,
    undrained ones below `per_worker_limit` and not in `exclude`.

    Raises Saturated when only full ones are left, and a 503 when none is healthy."""
    candidates, available = [], False
    group = pool.groups.get(role, ())
    # A model some workers list and others not (a LoRA adapter loaded on a few) goes to those
    # (and to any whose list is not known yet).
    model = request.model
    narrow = any(model in e.model_ids for e in group)
    for e in group:
        if narrow and e.model_ids and model not in e.model_ids:
            continue
        if e.healthy and not e.draining and e not in exclude:
            available = True
            if e.outstanding < per_worker_limit:
                candidates.append(e)
    if not candidates:
        if available:
            raise Saturated()
        raise GatewayError(
            503, f"no healthy {role} worker in pool '{pool.name}'", "no_healthy_worker", headers={"retry-after": "1"}
        )
    policy = pool.policies[role]
    chosen = policy.choose(request, candidates)
    # What the policy learns from the choice (a prefix tree's insert) waits until the request
    # is on its way: the decision alone stands between the client and the worker.
    asyncio.get_running_loop().call_soon(policy.routed, request, chosen)
    return chosen
