"""Routing policies: how a pool picks one endpoint among those that may take a request.

One module per policy, each a `Policy` subclass registered in `POLICIES` by its config name.
A policy is a pure decision over the request and the candidates' state; the caller has
already left out endpoints that are unhealthy, draining, ejected, full or already tried.
"""

from __future__ import annotations

from .base import Policy, RoutingRequest
from .least_outstanding import LeastOutstanding
from .precise_prefix import PrecisePrefix
from .prefix_aware import PrefixAware
from .session import Session

POLICIES: dict[str, type[Policy]] = {p.name: p for p in (LeastOutstanding, PrefixAware, Session, PrecisePrefix)}

__all__ = ["POLICIES", "Policy", "RoutingRequest", "make_policy"]


def make_policy(name: str, role: str, options: dict | None = None) -> Policy:
    """The policy called `name` for one role of a pool (`role` picks its load measure)."""
    return POLICIES[name](role, **(options or {}))
