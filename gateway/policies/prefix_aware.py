"""`prefix_aware`: send a request where its prompt's prefix was recently sent, unless that
worker is overloaded; below a match threshold, the least loaded worker wins.

The gateway does not see the workers' caches here: it remembers what it sent where
(chunk_tree.ChunkTree, bounded per endpoint like a worker's KV cache), which is right as long
as the workers have not evicted it. `precise_prefix` follows the workers' own cache events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Policy, RoutingRequest, requests_load
from .chunk_tree import ChunkTree, chain_hashes

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


class PrefixAware(Policy):
    """Cache-aware choice over an approximate per-endpoint prefix tree of the prompt text."""

    name = "prefix_aware"

    def __init__(
        self,
        role: str,
        chunk_chars: int = 64,
        max_blocks: int = 65536,
        match_threshold: float = 0.5,
        balance_abs_threshold: int = 8,
        balance_rel_threshold: float = 1.5,
    ) -> None:
        super().__init__(role)
        self.chunk = chunk_chars
        self.tree = ChunkTree(max_blocks)
        self.threshold = match_threshold
        self.abs_threshold = balance_abs_threshold
        self.rel_threshold = balance_rel_threshold
        self._turn = 0
        self._last: tuple[RoutingRequest | None, list[int]] = (None, [])

    def hashes(self, request: RoutingRequest) -> list[int]:
        last, hashes = self._last
        if last is not request:
            hashes = chain_hashes(request.prefix_text, self.chunk)
            self._last = (request, hashes)
        return hashes

    def choose(self, request: RoutingRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        self._turn += 1
        hashes = self.hashes(request)
        if hashes:
            depths = self.tree.match(hashes, [e.url for e in candidates])
            # Only a match that could pass the threshold needs the guard's look at the loads.
            deepest = max(depths)
            if deepest and deepest * self.chunk >= self.threshold * len(request.prefix_text):
                loads = [requests_load(e) for e in candidates]
                best, holders = pick(candidates, depths, loads, self.abs_threshold, self.rel_threshold)
                if best and best * self.chunk >= self.threshold * len(request.prefix_text):
                    return self.score.least(holders, self._turn)
        return self.score.least(candidates, self._turn)

    def routed(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        super().routed(request, endpoint)
        self.tree.insert(endpoint.url, self.hashes(request))
        self._last = (None, [])

    def forget(self, endpoint: Endpoint) -> None:
        self.tree.forget(endpoint.url)
