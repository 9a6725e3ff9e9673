"""`least_outstanding`: the endpoint with the fewest requests (prefill: prompt tokens) in flight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Policy, RoutingRequest

if TYPE_CHECKING:
    from ..pool import Endpoint


class LeastOutstanding(Policy):
    """Least loaded by the gateway's own counts; equal loads take turns (round-robin)."""

    name = "least_outstanding"

    def __init__(self, role: str) -> None:
        super().__init__(role)
        self._cursor = 0

    def choose(self, request: RoutingRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        attr = self.load
        loads = [getattr(e, attr) for e in candidates]
        low = min(loads)
        ties = [e for e, load in zip(candidates, loads, strict=True) if load == low]
        choice = ties[self._cursor % len(ties)]
        self._cursor += 1
        return choice
