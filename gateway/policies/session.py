"""`session`: the same session key always goes to the same worker, by rendezvous hashing.

Every (key, worker) pair gets a pseudo-random weight and the key goes to its heaviest
worker, so adding a worker takes over only the keys it now outweighs and removing one moves
only its own keys. The weight is a BLAKE2b of both, the same in every gateway process, so
replicas of the gateway agree. Requests without a key go to the least loaded worker.

Stickiness yields to the balance guard the prefix policies use (prefix_match.overloaded): a
key whose worker is overloaded goes to its next heaviest worker that is not, which is the
same in every replica too.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import TYPE_CHECKING

from .base import Policy, RoutingRequest, requests_load
from .prefix_match import overloaded

if TYPE_CHECKING:
    from ..pool import Endpoint


def weight(key: str, url: str) -> int:
    digest = blake2b(f"{url}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(key: str, candidates: Sequence[Endpoint]) -> Endpoint:
    return max(candidates, key=lambda e: weight(key, e.url))


class Session(Policy):
    """Affinity by `X-Session-Id` (else the OpenAI `user` field)."""

    name = "session"

    def __init__(self, role: str, balance_abs_threshold: int = 8, balance_rel_threshold: float = 1.5) -> None:
        super().__init__(role)
        self.abs_threshold = balance_abs_threshold
        self.rel_threshold = balance_rel_threshold
        self._turn = 0

    def choose(self, request: RoutingRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        key = request.session_key
        if key is not None:
            over = overloaded([requests_load(e) for e in candidates], self.abs_threshold, self.rel_threshold)
            allowed = [e for e, o in zip(candidates, over, strict=True) if not o]  # never empty: the least loaded
            return rendezvous(key, allowed)
        self._turn += 1
        return self.score.least(candidates, self._turn)
