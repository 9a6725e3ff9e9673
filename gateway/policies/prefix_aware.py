"""`prefix_aware`: send a request where its prompt's prefix was recently sent, unless that
worker is overloaded; below a match threshold, to its opening's affinity worker (affinity.py),
so every gateway process and replica sends a new conversation to the same worker.

The gateway does not see the workers' caches here: it remembers what it sent where
(chunk_tree.ChunkTree, bounded per endpoint like a worker's KV cache), which is right as long
as the workers have not evicted it. Each endpoint's bound is its cache's reported size
(`vllm:cache_config_info`, read by the worker-metrics poller) in chunks, unless `max_blocks`
is set. `precise_prefix` follows the workers' own cache events.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from .base import RoutingRequest
from .chunk_tree import ChunkTree, chain_hashes
from .prefix_match import PrefixPolicy

UNSIZED_BLOCKS = 65536  # an endpoint's bound until it reports its cache size (~12 MiB of view)

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
        max_blocks: int | None = None,
        match_threshold: float = 0.5,
        balance_abs_threshold: int | None = None,
        balance_rel_threshold: float = 1.5,
        score: str = "match",
        affinity_chars: int = 256,
        chars_per_token: float = 4.0,
        affinity_slack: int | None = None,
    ) -> None:
        view = ChunkTree(max_blocks or UNSIZED_BLOCKS)
        super().__init__(
            role, view, match_threshold, balance_abs_threshold, balance_rel_threshold, score, affinity_chars
        )
        self.chunk = chunk_chars
        self.affinity_slack = affinity_slack
        self.sized = max_blocks is None  # each endpoint's bound follows its reported cache size
        self.chars_per_token = chars_per_token
        self._sizes: dict[str, int] = {}  # url -> the cache size its bound was set from

    def blocks_for(self, cache_tokens: int) -> int:
        """A cache of `cache_tokens` tokens in chunks of prompt text."""
        return max(1, int(cache_tokens * self.chars_per_token / self.chunk))

    def names(self, request: RoutingRequest) -> list[Hashable]:
        return list(chain_hashes(request.prefix_text, self.chunk))

    def enough(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> bool:
        return depth > 0 and depth * self.chunk >= self.threshold * len(request.prefix_text)

    def cached_tokens(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> float:
        text = len(request.prefix_text)
        return request.prompt_tokens * min(1.0, depth * self.chunk / text) if text else 0.0

    def learn(self, endpoint: Endpoint, names: list[Hashable]) -> None:
        if self.sized and self._sizes.get(endpoint.url) != endpoint.cache_tokens and endpoint.cache_tokens:
            self._sizes[endpoint.url] = endpoint.cache_tokens
            self.view.set_limit(endpoint.url, self.blocks_for(endpoint.cache_tokens))
        self.view.insert(endpoint.url, names)

    def forget(self, endpoint: Endpoint) -> None:
        super().forget(endpoint)
        self._sizes.pop(endpoint.url, None)
