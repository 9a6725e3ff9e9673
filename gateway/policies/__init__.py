"""Routing policies: how a pool picks one endpoint among those that may take a request.

One module per policy, each a `Policy` subclass named in `POLICIES` by its config name. A
policy's module loads when a pool uses it, so its dependencies (`precise_prefix`: the
`precise` extra) load with that policy, not with every `serve`. A policy is a pure decision
over the request and the candidates' state; the caller has already left out endpoints that
are unhealthy, draining, ejected, full or already tried.
"""

from __future__ import annotations

from importlib import import_module

from .base import Policy, RoutingRequest

# config name -> (module in this package, class)
POLICIES: dict[str, tuple[str, str]] = {
    "least_outstanding": ("least_outstanding", "LeastOutstanding"),
    "prefix_aware": ("prefix_aware", "PrefixAware"),
    "session": ("session", "Session"),
    "precise_prefix": ("precise_prefix", "PrecisePrefix"),
}

__all__ = ["POLICIES", "Policy", "RoutingRequest", "make_policy", "policy_class"]


def policy_class(name: str) -> type[Policy]:
    module, cls = POLICIES[name]
    policy: type[Policy] = getattr(import_module(f"{__name__}.{module}"), cls)
    return policy


def make_policy(name: str, role: str, options: dict | None = None) -> Policy:
    """The policy called `name` for one role of a pool (`role` picks its load measure)."""
    return policy_class(name)(role, **(options or {}))
