"""What the prefix policies share: a request's chain of prefix names, matched against a per-endpoint
view of what each endpoint holds, under a match threshold and SGLang's balance guard."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from .base import Policy, RoutingRequest, requests_load
from .chunk_tree import ChunkTree

if TYPE_CHECKING:
    from ..pool import Endpoint


def overloaded(loads: Sequence[int], abs_threshold: int, rel_threshold: float) -> list[bool]:
    """The balance guard (as SGLang's router): a worker may not take a request for its cache
    while it has more than `abs_threshold` requests above the least loaded one AND more than
    `rel_threshold` times its load."""
    low = min(loads)
    return [load - low > abs_threshold and load > low * rel_threshold for load in loads]


def pick(
    candidates: Sequence[Endpoint],
    depths: Sequence[int],
    loads: Sequence[int],
    abs_threshold: int,
    rel_threshold: float,
) -> tuple[int, list[Endpoint]]:
    """The deepest match among the workers the guard allows, and the workers that have it."""
    over = overloaded(loads, abs_threshold, rel_threshold)
    best = max((d for d, o in zip(depths, over, strict=True) if not o), default=0)
    return best, [e for e, d, o in zip(candidates, depths, over, strict=True) if d == best and not o]


class PrefixPolicy(Policy):
    """Sends a request to the endpoint holding its longest prefix (`view`), unless that endpoint is
    overloaded; a match that covers less than `match_threshold` of the prompt loses to the least loaded."""

    def __init__(
        self,
        role: str,
        view: ChunkTree,
        match_threshold: float,
        balance_abs_threshold: int,
        balance_rel_threshold: float,
    ) -> None:
        super().__init__(role)
        self.view = view
        self.threshold = match_threshold
        self.abs_threshold = balance_abs_threshold
        self.rel_threshold = balance_rel_threshold
        self._turn = 0
        self._last: tuple[RoutingRequest | None, list[Hashable]] = (None, [])

    @abstractmethod
    def names(self, request: RoutingRequest) -> list[Hashable]:
        """The chain of names of the request's prompt prefixes, shortest first."""

    @abstractmethod
    def enough(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> bool:
        """Whether a match `depth` names deep covers enough of the prompt to follow it."""

    def hashes(self, request: RoutingRequest) -> list[Hashable]:
        """`names(request)`, computed once per request (choose and routed both need them)."""
        last, names = self._last
        if last is not request:
            names = self.names(request)
            self._last = (request, names)
        return names

    def choose(self, request: RoutingRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        self._turn += 1
        names = self.hashes(request)
        if names:
            depths = self.view.match(names, [e.url for e in candidates])
            # Only a match that could pass the threshold needs the guard's look at the loads.
            if self.enough(max(depths), request, names):
                loads = [requests_load(e) for e in candidates]
                best, holders = pick(candidates, depths, loads, self.abs_threshold, self.rel_threshold)
                if best and self.enough(best, request, names):
                    return self.score.least(holders, self._turn)
        return self.score.least(candidates, self._turn)

    def routed(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        super().routed(request, endpoint)
        self._last = (None, [])

    def forget(self, endpoint: Endpoint) -> None:
        self.view.forget(endpoint.url)
