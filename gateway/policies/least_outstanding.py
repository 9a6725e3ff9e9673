"""`least_outstanding`: the endpoint with the fewest requests (prefill: prompt tokens) in flight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Policy, RoutingRequest

if TYPE_CHECKING:
    from ..pool import Endpoint


class LeastOutstanding(Policy):
    """Least loaded (the gateway's own counts, plus the worker's report when polled); equal
    loads take turns (round-robin)."""

    name = "least_outstanding"

    def __init__(self, role: str) -> None:
        super().__init__(role)
        self._cursor = 0

    def choose(self, request: RoutingRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        self._cursor += 1
        return self.score.least(candidates, self._cursor - 1)
