"""`prefix_aware`: send a request where its prompt's prefix was recently sent, unless that
worker is overloaded; below a match threshold, the least loaded worker wins.

The gateway does not see the workers' caches here: it remembers what it sent where
(chunk_tree.ChunkTree, bounded per endpoint like a worker's KV cache), which is right as long
as the workers have not evicted it. `precise_prefix` follows the workers' own cache events.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from .base import RoutingRequest
from .chunk_tree import ChunkTree, chain_hashes
from .prefix_match import PrefixPolicy

if TYPE_CHECKING:
    from ..pool import Endpoint


class PrefixAware(PrefixPolicy):
    """Cache-aware choice over an approximate per-endpoint prefix tree of the prompt text."""

    name = "prefix_aware"
    learns = True

    def __init__(
        self,
        role: str,
        chunk_chars: int = 64,
        max_blocks: int = 65536,
        match_threshold: float = 0.5,
        balance_abs_threshold: int = 8,
        balance_rel_threshold: float = 1.5,
        score: str = "match",
    ) -> None:
        super().__init__(
            role, ChunkTree(max_blocks), match_threshold, balance_abs_threshold, balance_rel_threshold, score
        )
        self.chunk = chunk_chars

    def names(self, request: RoutingRequest) -> list[Hashable]:
        return list(chain_hashes(request.prefix_text, self.chunk))

    def enough(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> bool:
        return depth > 0 and depth * self.chunk >= self.threshold * len(request.prefix_text)

    def cached_tokens(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> float:
        text = len(request.prefix_text)
        return request.prompt_tokens * min(1.0, depth * self.chunk / text) if text else 0.0

    def learn(self, endpoint: Endpoint, names: list[Hashable]) -> None:
        self.view.insert(endpoint.url, names)
