"""vLLM's prefix-cache block hashes, computed by the gateway from a request's tokens.

vLLM 0.32 (vllm/v1/core/kv_cache_utils.py, hash_block_tokens) names each full block of
`block_size` tokens by `H((parent, tuple(block_tokens), extra_keys))`, where parent is the
previous block's hash, or for the first block NONE_HASH = H(seed), the seed being the
workers' PYTHONHASHSEED or, unset, "vllm-none-hash" (for the SHA-256 algorithms). H is the
`--prefix-caching-hash-algo`: `sha256` (of the pickled tuple, the default) or
`sha256_cbor` (of its canonical CBOR). extra_keys is None for plain text requests (no
LoRA, multimodal input or cache_salt). KV events carry the low 64 bits of each hash, as an
int (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1, the default).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_SEED = "vllm-none-hash"
LOW_64 = (1 << 64) - 1


def sha256_pickle(value: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def sha256_cbor(value: Any) -> bytes:
    import cbor2  # only for workers run with --prefix-caching-hash-algo sha256_cbor

    return hashlib.sha256(cbor2.dumps(value, canonical=True)).digest()


ALGORITHMS: dict[str, Callable[[Any], bytes]] = {"sha256": sha256_pickle, "sha256_cbor": sha256_cbor}


def external(block_hash: bytes) -> int:
    """The form KV events carry."""
    return int.from_bytes(block_hash, "big") & LOW_64


class BlockHasher:
    def __init__(self, algo: str = "sha256", block_size: int = 16, seed: str | None = None) -> None:
        self.fn = ALGORITHMS[algo]
        self.block_size = block_size
        self.none_hash = self.fn(seed if seed is not None else DEFAULT_SEED)

    def chain(self, token_ids: Sequence[int], parent: bytes | None = None) -> list[bytes]:
        """The hash of every full block of `token_ids` (after `parent`, else from the start)."""
        out: list[bytes] = []
        h = parent or self.none_hash
        size = self.block_size
        for start in range(0, len(token_ids) - size + 1, size):
            h = self.fn((h, tuple(token_ids[start : start + size]), None))
            out.append(h)
        return out

    def external_chain(self, token_ids: Sequence[int]) -> list[int]:
        return [external(h) for h in self.chain(token_ids)]
