"""`precise_prefix`: route on the KV blocks each worker really holds, from its own KV-cache events.

Every worker publishes which blocks it stored and evicted (vLLM `--kv-events-config`);
the gateway keeps, per worker, the set of block hashes it holds, computes the request's
block hashes the way the engine does (the served model's tokenizer, vLLM's chained
SHA-256; block_hash.py) and sends the request to the worker holding the longest prefix of
them, under the same threshold and balance guard as `prefix_aware`. Every gateway replica
subscribed to the same workers sees the same state, and evictions are known, not guessed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Hashable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..kv_events import Cleared, Event, Removed, Stored, Subscriber
from .base import RoutingRequest
from .block_hash import BlockHasher, external
from .chunk_tree import ChunkTree
from .prefix_match import PrefixPolicy
from .prompt_tokens import PromptTokenizer

if TYPE_CHECKING:
    from ..pool import Endpoint

log = logging.getLogger("pd_gateway.precise_prefix")


class PrecisePrefix(PrefixPolicy):
    name = "precise_prefix"

    def __init__(
        self,
        role: str,
        tokenizer: str,
        block_size: int | None = None,
        hash_algo: str = "sha256",
        hash_seed: str | None = None,
        events_port: int = 5557,
        events: dict[str, str] | None = None,
        topic: str = "",
        max_blocks: int = 262144,
        match_threshold: float = 0.1,
        balance_abs_threshold: int = 8,
        balance_rel_threshold: float = 1.5,
        score: str = "match",
    ) -> None:
        # The view: worker URL -> the block hashes it holds. Its evictions remove blocks; the cap
        # (oldest first) bounds what lost evictions would leave behind.
        super().__init__(
            role, ChunkTree(max_blocks), match_threshold, balance_abs_threshold, balance_rel_threshold, score
        )
        self.tokenize = PromptTokenizer(tokenizer)
        self.hasher = BlockHasher(hash_algo, block_size or 0, hash_seed)  # 0: learnt from the first event
        self.events_port = events_port
        self.events = dict(events or {})
        self.topic = topic
        self.subscribers: dict[str, Subscriber] = {}
        self.rescan_s = 1.0  # how often the pool's endpoints are checked for ones to subscribe to
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.checked = 0  # stored blocks whose hash the gateway recomputed ...
        self.mismatched = 0  # ... and got differently (wrong tokenizer, algorithm, seed or block size)

    # -- the workers' events ---------------------------------------------------------------

    def endpoint_for(self, url: str) -> str:
        return self.events.get(url) or f"tcp://{urlsplit(url).hostname}:{self.events_port}"

    def background(self, endpoints: Sequence[Endpoint]) -> list[Coroutine[Any, Any, None]]:
        for e in endpoints:
            self._subscriber(e.url)
        return [self._follow(endpoints)]

    def _subscriber(self, url: str) -> Subscriber:
        sub = self.subscribers.get(url)
        if sub is None:
            sub = self.subscribers[url] = Subscriber(
                self.endpoint_for(url), partial(self.apply, url), self.topic, on_reset=partial(self.reset, url)
            )
        return sub

    async def _follow(self, endpoints: Sequence[Endpoint]) -> None:
        """Run a subscriber for every endpoint of the group, including those service discovery
        adds later (`endpoints` is the pool's live list); one that leaves stops in `forget`."""
        try:
            while True:
                for e in list(endpoints):
                    if e.url not in self._tasks:
                        self._tasks[e.url] = asyncio.create_task(self._subscriber(e.url).run())
                await asyncio.sleep(self.rescan_s)
        finally:
            for task in self._tasks.values():
                task.cancel()
            self._tasks.clear()

    def forget(self, endpoint: Endpoint) -> None:
        task = self._tasks.pop(endpoint.url, None)
        if task is not None:
            task.cancel()
        self.subscribers.pop(endpoint.url, None)
        super().forget(endpoint)

    def apply(self, url: str, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Stored):
                self._check(event)
                self.view.insert(url, event.hashes)
            elif isinstance(event, Removed):
                self.view.remove(url, event.hashes)
            elif isinstance(event, Cleared):
                self.view.forget(url)

    def reset(self, url: str) -> None:
        """The worker's events can no longer be followed (some were lost, or it restarted):
        what it holds is unknown, so nothing is believed until its next events."""
        self.view.forget(url)

    def _check(self, event: Stored) -> None:
        """Recompute the hashes of a chain's first blocks: the gateway must name blocks as the engine does."""
        if not self.hasher.block_size:
            self.hasher.block_size = event.block_size
            log.info("workers' KV block size: %d tokens", event.block_size)
        if event.block_size != self.hasher.block_size:
            self.mismatched += len(event.hashes)
            return
        if event.parent is not None:
            return
        ours = [external(h) for h in self.hasher.chain(event.token_ids)]
        theirs = [h if isinstance(h, int) else external(h) for h in event.hashes]
        self.checked += len(theirs)
        if ours != theirs[: len(ours)] or len(ours) != len(theirs):
            if not self.mismatched:
                log.warning(
                    "block hashes differ from the engine's: check tokenizer, hash_algo, hash_seed, "
                    "block_size (events say %d)",
                    event.block_size,
                )
            self.mismatched += len(theirs)

    # -- choosing --------------------------------------------------------------------------

    def names(self, request: RoutingRequest) -> list[Hashable]:
        if not self.hasher.block_size:  # no event yet: nothing is known to be cached
            return []
        return list(self.hasher.external_chain(self.tokenize(request.route, request.body)))

    def enough(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> bool:
        return depth > 0 and depth >= self.threshold * len(names)

    def cached_tokens(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> float:
        return float(min(request.prompt_tokens, depth * self.hasher.block_size))
