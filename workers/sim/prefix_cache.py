"""Per-worker prefix (KV) cache model, block-granular like vLLM's automatic prefix caching.

A prompt's tokens are cut into full blocks of `block_size` tokens; block i's hash is
hash(hash of block i-1, tokens of block i), so a block hash names the whole prefix up
to and including that block (vLLM's chained block hash).  A trailing partial block is
never cached.  Lookup walks the chain from the first block and stops at the first miss.

As in vLLM (`KVCacheManager.get_computed_blocks`):
- at most `num_tokens - 1` tokens can hit (the last prompt token is always computed, so
  a prompt that is entirely cached still hits one block less when it is block-aligned);
- a query counts the request's prompt tokens, a hit counts the cached tokens found;
- a request's full blocks are cached as soon as it is admitted (vLLM caches blocks when
  it allocates them), so the `n` samples of one prompt hit each other's blocks.

Capacity is in blocks; beyond it the least recently used block is evicted.  Unlike vLLM,
blocks of running requests are not pinned (the simulator never runs out of KV memory).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_BLOCK_SIZE = 16
DEFAULT_CAPACITY_BLOCKS = 4096  # 64 MiB of the tiny model's KV on real vLLM CPU
_ROOT_HASH = hashlib.blake2b(b"pd-sim-prefix-cache-root", digest_size=16).digest()


def tokenize(text: str) -> list[str]:
    """The simulator's tokens: whitespace-separated words (as `count_tokens` counts them)."""
    return text.split() or [""]


def block_hashes(tokens: Sequence[str], block_size: int) -> list[bytes]:
    """Chained hashes of every full block of `tokens`."""
    out: list[bytes] = []
    parent = _ROOT_HASH
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = "\x00".join(tokens[start : start + block_size]).encode()
        parent = hashlib.blake2b(parent + block, digest_size=16).digest()
        out.append(parent)
    return out


@dataclass(frozen=True)
class CacheResult:
    """What one admitted prompt found in the cache."""

    prompt_tokens: int
    cached_tokens: int

    @property
    def uncached_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


@dataclass
class CacheStats:
    requests: int = 0
    queries: int = 0  # prompt tokens looked up (vllm:prefix_cache_queries_total)
    hits: int = 0  # of which found cached (vllm:prefix_cache_hits_total)
    evictions: int = 0


class PrefixCache:
    """LRU set of block hashes with vLLM's hit accounting."""

    def __init__(
        self, capacity_blocks: int = DEFAULT_CAPACITY_BLOCKS, block_size: int = DEFAULT_BLOCK_SIZE, enabled: bool = True
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must be >= 0, got {capacity_blocks}")
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self.enabled = enabled
        self.stats = CacheStats()
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._blocks

    def admit(self, tokens: Sequence[str]) -> CacheResult:
        """Look a prompt up (counting the query and hit), then cache its full blocks."""
        num_tokens = len(tokens)
        if not self.enabled:
            return CacheResult(num_tokens, 0)
        hashes = block_hashes(tokens, self.block_size)
        hit_blocks = self._longest_hit(hashes, (num_tokens - 1) // self.block_size)
        cached = hit_blocks * self.block_size
        self.stats.requests += 1
        self.stats.queries += num_tokens
        self.stats.hits += cached
        self._insert(hashes)
        return CacheResult(num_tokens, cached)

    def store(self, tokens: Sequence[str]) -> None:
        """Cache the full blocks of `tokens` without a lookup (a sequence's generated tokens)."""
        if self.enabled:
            self._insert(block_hashes(tokens, self.block_size))

    def _longest_hit(self, hashes: list[bytes], max_blocks: int) -> int:
        hit = 0
        for h in hashes[:max_blocks]:
            if h not in self._blocks:
                break
            hit += 1
        return hit

    def _insert(self, hashes: list[bytes]) -> None:
        for h in hashes:
            if h in self._blocks:
                self._blocks.move_to_end(h)
            else:
                self._blocks[h] = None
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
            self.stats.evictions += 1

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks a sequence of num_tokens occupies (partial block included)."""
        return -(-num_tokens // self.block_size)

    def reset(self) -> None:
        """Forget every block and zero the counters (vLLM's /reset_prefix_cache drops blocks)."""
        self._blocks.clear()
        self.stats = CacheStats()
