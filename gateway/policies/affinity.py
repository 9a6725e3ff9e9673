"""Where a prompt goes when no worker is known to hold its prefix: the same worker from every
gateway process and replica, unless that worker is overloaded.

Each gateway process keeps its own view of what it sent where, so a conversation whose turns
reach different processes (or replicas behind a Service) would otherwise be spread over the
workers by whoever was least loaded at each turn. Instead the prompt's opening (its first
`affinity_chars` characters: a conversation's every turn, and every request of one system prompt,
start with the same ones) is hashed with each worker's URL (rendezvous hashing: BLAKE2b, the
same in every process), and the heaviest worker the balance guard allows takes it: consistent
hashing with bounded loads. Adding or removing a worker moves only the openings it wins or held.
Once a process has sent a prefix somewhere, its own view (the deepest match) decides; both agree
unless the guard moved a conversation, and then at worst a turn is recomputed elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from math import ceil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pool import Endpoint

MIN_ABS_THRESHOLD = 8  # the adaptive guard's floor, in requests (the fixed default it replaces)


def weight(key: bytes, url: str) -> int:
    return int.from_bytes(blake2b(key, digest_size=8, key=url.encode()[:64]).digest(), "big")


def opening(text: str, chars: int) -> bytes:
    """The part of a prompt that names its conversation (or its shared system prompt)."""
    return text[:chars].encode()


def adaptive_threshold(loads: Sequence[float]) -> int:
    """The balance guard's absolute threshold when none is configured: the mean load per worker,
    at least MIN_ABS_THRESHOLD. A fixed threshold trips on every decision once each worker has
    more requests in flight than it (the cache is then never followed) and is too loose below
    it; the mean load grows with the load. The floor keeps a small pool's hot prefix together:
    replayed, the mean alone (floor 2) spread shared system prompts and cost a third of the hits
    (42 % against 68 %)."""
    return max(MIN_ABS_THRESHOLD, ceil(sum(loads) / len(loads)))


def heaviest(key: bytes, candidates: Sequence[Endpoint], allowed: Sequence[bool]) -> Endpoint | None:
    """The allowed candidate with the highest rendezvous weight for `key` (None: none allowed)."""
    best: Endpoint | None = None
    top = -1
    for e, ok in zip(candidates, allowed, strict=True):
        if ok:
            w = weight(key, e.url)
            if w > top:
                best, top = e, w
    return best
