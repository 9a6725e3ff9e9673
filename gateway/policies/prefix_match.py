"""What the prefix policies share: a request's chain of prefix names, matched against a per-endpoint
view of what each endpoint holds, under a match threshold and SGLang's balance guard.

Two ways to score a match (`score`):
- `match`: the deepest match the guard allows wins (ties: least loaded); below the threshold,
  the least loaded endpoint.
- `cost`: the endpoint where the request would start soonest, in prefill tokens: the uncached
  tokens already queued there (backlog.Backlog) plus this request's tokens not cached there.
  An endpoint the guard marks overloaded, or whose match is below the threshold, counts as not
  holding the prefix. Ties: least loaded, then turns.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from .affinity import adaptive_threshold, heaviest, opening
from .backlog import Backlog
from .base import Policy, RoutingRequest, requests_load
from .chunk_tree import ChunkTree

SCORES = ("match", "cost")

if TYPE_CHECKING:
    from ..pool import Endpoint


def overloaded(loads: Sequence[int], abs_threshold: int | None, rel_threshold: float) -> list[bool]:
    """The balance guard (as SGLang's router): a worker may not take a request for its cache
    while it has more than `abs_threshold` requests above the least loaded one AND more than
    `rel_threshold` times its load. `abs_threshold` None: the mean load (affinity.adaptive_threshold)."""
    low = min(loads)
    if abs_threshold is None:
        abs_threshold = adaptive_threshold(loads)
    return [load - low > abs_threshold and load > low * rel_threshold for load in loads]


def pick(
    candidates: Sequence[Endpoint],
    depths: Sequence[int],
    loads: Sequence[int],
    abs_threshold: int | None,
    rel_threshold: float,
) -> tuple[int, list[Endpoint]]:
    """The deepest match among the workers the guard allows, and the workers that have it."""
    over = overloaded(loads, abs_threshold, rel_threshold)
    best = max((d for d, o in zip(depths, over, strict=True) if not o), default=0)
    return best, [e for e, d, o in zip(candidates, depths, over, strict=True) if d == best and not o]


class PrefixPolicy(Policy):
    """Sends a request to the endpoint holding its longest prefix (`view`), unless that endpoint is
    overloaded; below `match_threshold` of the prompt, to its opening's affinity worker (affinity.py)
    when `affinity_chars` > 0, else to the least loaded."""

    learns = False  # whether `learn` records routed requests (then `routed` needs their names)

    def __init__(
        self,
        role: str,
        view: ChunkTree,
        match_threshold: float,
        balance_abs_threshold: int | None,
        balance_rel_threshold: float,
        score: str = "match",
        affinity_chars: int = 0,
    ) -> None:
        super().__init__(role)
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.view = view
        self.threshold = match_threshold
        self.abs_threshold = balance_abs_threshold
        self.rel_threshold = balance_rel_threshold
        self.by_cost = score == "cost"
        self.affinity_chars = affinity_chars
        self.affinity_slack: int | None = None
        self.backlog = Backlog()
        self._turn = 0
        self._last: tuple[RoutingRequest | None, list[Hashable]] = (None, [])
        # the last choice by cost: its request, candidates and their uncached tokens
        self._uncached: tuple[RoutingRequest | None, Sequence[Endpoint], list[float]] = (None, (), [])

    @abstractmethod
    def names(self, request: RoutingRequest) -> list[Hashable]:
        """The chain of names of the request's prompt prefixes, shortest first."""

    @abstractmethod
    def enough(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> bool:
        """Whether a match `depth` names deep covers enough of the prompt to follow it."""

    @abstractmethod
    def cached_tokens(self, depth: int, request: RoutingRequest, names: list[Hashable]) -> float:
        """The prompt tokens a match `depth` names deep covers (an estimate in the units of
        `request.prompt_tokens`)."""

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
        if self.by_cost:
            return self._cheapest(request, candidates, names)
        if names:
            depths = self.view.match(names, [e.url for e in candidates])
            # Only a match that could pass the threshold needs the guard's look at the loads.
            if self.enough(max(depths), request, names):
                loads = [requests_load(e) for e in candidates]
                best, holders = pick(candidates, depths, loads, self.abs_threshold, self.rel_threshold)
                if best and self.enough(best, request, names):
                    return self.score.least(holders, self._turn)
        return self.fresh(request, candidates)

    def fresh(self, request: RoutingRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        """No candidate holds enough of the prompt: its opening's affinity worker among those the
        guard allows (the same in every gateway process), else the least loaded."""
        if self.affinity_chars and len(candidates) > 1:
            loads = [requests_load(e) for e in candidates]
            if self.affinity_slack is None:
                allowed = [not o for o in overloaded(loads, self.abs_threshold, self.rel_threshold)]
            else:
                low = min(loads)
                allowed = [load - low <= self.affinity_slack for load in loads]
            key = opening(request.prefix_text, self.affinity_chars)
            chosen = heaviest(key, candidates, allowed)
            if chosen is not None:
                return chosen
        return self.score.least(candidates, self._turn)

    def _uncached_on(self, request: RoutingRequest, depth: int, names: list[Hashable]) -> float:
        hit = self.cached_tokens(depth, request, names) if self.enough(depth, request, names) else 0.0
        return max(request.prompt_tokens - hit, 0.0)

    def _cheapest(self, request: RoutingRequest, candidates: Sequence[Endpoint], names: list[Hashable]) -> Endpoint:
        """`score: cost`: the least queued + uncached prefill tokens (see the module's doc)."""
        n = len(candidates)
        depths = self.view.match(names, [e.url for e in candidates]) if names else [0] * n
        if max(depths):
            over = overloaded([requests_load(e) for e in candidates], self.abs_threshold, self.rel_threshold)
            depths = [0 if o else d for d, o in zip(depths, over, strict=True)]
        by_depth = {d: self._uncached_on(request, d, names) for d in set(depths)}
        uncached = [by_depth[d] for d in depths]
        backlog = self.backlog.of
        costs = [backlog(e) + u for e, u in zip(candidates, uncached, strict=True)]
        low = min(costs)
        self._uncached = (request, candidates, uncached)
        if costs.count(low) == 1:
            return candidates[costs.index(low)]
        return self.score.least([e for e, c in zip(candidates, costs, strict=True) if c == low], self._turn)

    def names_of(self, request: RoutingRequest) -> list[Hashable]:
        """`request`'s names without touching the cache: the balancer runs `routed` a loop turn
        after `choose`, so the cache may hold the names of a request that chose in between."""
        last, names = self._last
        return names if last is request else self.names(request)

    def learn(self, endpoint: Endpoint, names: list[Hashable]) -> None:
        """What a policy records of a request routed to `endpoint` (prefix_aware: its names in the
        view); none by default (precise_prefix learns from the workers' events)."""

    def routed(self, request: RoutingRequest, endpoint: Endpoint) -> None:
        names: list[Hashable] | None = None
        if self.by_cost:  # the estimate needs the match before the view learns the names
            last, candidates, known = self._uncached
            if last is request:
                self._uncached = (None, (), [])
            uncached = known[candidates.index(endpoint)] if last is request and endpoint in candidates else None
            if uncached is None:  # an override, the endpoint was not a candidate, or another choice came between
                names = self.names_of(request)
                depth = self.view.match(names, [endpoint.url])[0] if names else 0
                uncached = self._uncached_on(request, depth, names)
            self.backlog.record(endpoint.url, uncached)
        super().routed(request, endpoint)
        if self.learns:
            self.learn(endpoint, names if names is not None else self.names_of(request))
        if self._last[0] is request:  # (only this request's: another's is still to be routed)
            self._last = (None, [])

    def forget(self, endpoint: Endpoint) -> None:
        self.view.forget(endpoint.url)
        self.backlog.forget(endpoint.url)
