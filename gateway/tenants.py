"""Tenants: whose an API key is, their budgets, and the admission queue that shares the
gateway's capacity between them.

Every request belongs to a tenant (`tenants:` in the config; a key of `auth.api_keys`, or none
when /v1 is open, belongs to the default tenant, which has no budgets). Admission, in order:

1. budgets, each refused at once with 429 and `Retry-After`: `max_concurrent` (in flight or
   queued), `requests_per_minute`, `tokens_per_minute` (prompt + completion from the usage of
   the tenant's finished requests: a tenant over it waits until the budget has refilled);
2. a slot of `limits.max_inflight` if one is free and nobody waits;
3. else the queue (`limits.queue` places, `limits.queue_timeout_s`): when a slot frees, the
   highest `priority` class with someone waiting is served first; within a class, weighted
   fair queueing by token work (start-time fair queueing, Goyal et al. 1996): each waiter
   is tagged with a virtual start = max(the class's virtual time, its tenant's last finish
   tag), and its tenant's finish tag moves on by its work / `weight`; the least start tag
   is served next and becomes the class's virtual time. A tenant with a long backlog has
   tags far ahead; one that starts waiting starts at the virtual time, so it is served
   within about one request of the backlog, and it cannot bank credit while idle.

A request's work is its prompt estimate (body bytes / 4) plus its tenant's usual completion
length (a moving average of the completion tokens of its finished requests).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

from .auth import bearer, check_key
from .config import GatewayConfig, Tenant
from .errors import GatewayError
from .limits import Admission, overloaded

if TYPE_CHECKING:
    from .telemetry import Trace

_now = time.monotonic
_NO_KEY = "missing or invalid API key; send 'Authorization: Bearer <key>'"


class Bucket:
    """A per-minute budget as a token bucket holding `burst_s` seconds' worth (at least one)."""

    __slots__ = ("rate", "cap", "level", "at")

    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.rate = per_minute / 60.0
        self.cap = max(1.0, self.rate * burst_s)
        self.level = self.cap
        self.at = _now()

    def wait_s(self, need: float = 1.0) -> float:
        """Seconds until `need` is in the bucket (0: now)."""
        now = _now()
        self.level = min(self.cap, self.level + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class TenantState:
    """One tenant's share: its budgets, its place in the queue, its counts for /metrics."""

    def __init__(self, config: Tenant | None) -> None:
        self.name = config.name if config is not None else ""
        self.inflight = 0
        self.waiting: deque[tuple[float, int, asyncio.Future[None]]] = deque()  # (start tag, seq, slot)
        self.finish = 0.0  # finish tag of its last queued request: virtual token work / weight
        self.expected = 0.0  # completion tokens of its requests, a moving average: charged when queued
        self.admitted = 0
        self.rejected: Counter[str] = Counter()  # reason -> requests refused
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.configure(config)

    def configure(self, config: Tenant | None) -> None:
        self.config = config
        self.priority = config.priority if config is not None else 0
        self.weight = config.weight if config is not None else 1.0
        self.max_concurrent = config.max_concurrent if config is not None else None
        rpm = config.requests_per_minute if config is not None else None
        tpm = config.tokens_per_minute if config is not None else None
        burst = config.burst_s if config is not None else 0.0
        old_r, old_t = getattr(self, "requests", None), getattr(self, "tokens", None)
        self.requests = _rebucket(old_r, rpm, burst)
        self.tokens = _rebucket(old_t, tpm, burst)

    def check_budgets(self) -> None:
        """429 with Retry-After when a budget is spent; else the request's one is taken."""
        if self.max_concurrent is not None and self.inflight + len(self.waiting) >= self.max_concurrent:
            self._refuse("concurrency", 1.0, f"{self.max_concurrent} requests in flight")
        if self.tokens is not None and (wait := self.tokens.wait_s()) > 0:
            self._refuse("tokens_per_minute", wait, f"its budget of {self._per_min(self.tokens)} tokens per minute")
        if self.requests is not None:
            if (wait := self.requests.wait_s()) > 0:
                self._refuse(
                    "requests_per_minute", wait, f"its budget of {self._per_min(self.requests)} requests per minute"
                )
            self.requests.level -= 1

    @staticmethod
    def _per_min(bucket: Bucket) -> str:
        return f"{bucket.rate * 60:g}"

    def _refuse(self, reason: str, wait_s: float, what: str) -> None:
        self.rejected[reason] += 1
        retry = max(1, math.ceil(wait_s))
        raise GatewayError(
            429,
            f"tenant '{self.name}' is over {what}; retry after {retry}s",
            "rate_limit_exceeded",
            headers={"retry-after": str(retry)},
        )

    def ended(self, tokens: tuple[int, int]) -> None:
        prompt, completion = tokens
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.expected += (completion - self.expected) / 8
        if self.tokens is not None:
            self.tokens.wait_s()  # refill up to now before spending
            self.tokens.level -= prompt + completion


def _rebucket(old: Bucket | None, per_minute: float | None, burst_s: float) -> Bucket | None:
    """A budget after a reload: a changed one starts full, an unchanged one keeps its level."""
    if per_minute is None:
        return None
    if (
        old is not None
        and math.isclose(old.rate * 60, per_minute)
        and math.isclose(old.cap, max(1.0, per_minute / 60 * burst_s))
    ):
        return old
    return Bucket(per_minute, burst_s)


def _digest(key: str) -> bytes:
    # Keys are looked up by their hash: a dict probe that tells nothing about near misses.
    return hashlib.sha256(key.encode()).digest()


class TenantAdmission(Admission):
    """The gateway's admission (`limits.max_inflight`, `queue`, `queue_timeout_s`), tenant-aware."""

    def __init__(self, config: GatewayConfig) -> None:
        limits = config.limits
        super().__init__(limits.max_inflight, limits.queue, limits.queue_timeout_s)
        self.default = TenantState(None)
        self.states: dict[str, TenantState] = {}
        self._by_key: dict[bytes, TenantState] = {}
        self._api_keys: list[str] = []
        self._backlogged: list[TenantState] = []  # tenants with someone waiting
        self._queued = 0
        self._seq = 0
        self._virtual: dict[int, float] = {}  # priority class -> start tag of its last dispatched waiter
        self.configure(config)

    def configure(self, config: GatewayConfig) -> None:
        """Apply a (re)loaded config: keys, tenants, limits. Tenants that stay keep their
        fair-queue tags and budget levels; requests of a removed one finish on its old state."""
        limits = config.limits
        self.limit, self.queue, self.timeout_s = limits.max_inflight, limits.queue, limits.queue_timeout_s
        states: dict[str, TenantState] = {}
        for tenant in config.tenants:
            state = self.states.get(tenant.name)
            if state is None:
                state = TenantState(tenant)
            else:
                state.configure(tenant)
            states[tenant.name] = state
        self.states = states
        self._by_key = {_digest(k): s for s in states.values() for k in (s.config.api_keys if s.config else [])}
        self._api_keys = list(config.auth.api_keys)
        while self._queued and self.inflight < self.limit:  # room made: the waiters get it now
            self._dispatch()

    def identify(self, header: str) -> TenantState:
        """The tenant of the request's `Authorization` header; 401 for an unknown key (when keys
        are configured at all)."""
        if not self._by_key:
            check_key(header, self._api_keys)
            return self.default
        given = bearer(header)
        state = self._by_key.get(_digest(given)) if given else None
        if state is not None:
            return state
        if not self._api_keys:
            raise GatewayError(401, _NO_KEY, "invalid_api_key")
        check_key(header, self._api_keys)
        return self.default

    @property
    def queued(self) -> int:
        return self._queued

    async def enter(self, tenant: TenantState | None = None, work: int = 0) -> None:
        t = tenant or self.default
        t.check_budgets()
        if self.inflight < self.limit and not self._queued:
            self._admit(t)
            return
        if self._queued >= self.queue:
            t.rejected["queue_full"] += 1
            raise overloaded(f"the gateway has {self.inflight} requests in flight and a full queue")
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(t, slot, work)
        try:
            await asyncio.wait_for(asyncio.shield(slot), self.timeout_s)
        except (TimeoutError, asyncio.CancelledError) as err:
            if slot.done():
                self.leave(t)  # the slot was handed over just as we gave up
            else:
                slot.cancel()
                self._dequeue(t, slot)
            if isinstance(err, TimeoutError):
                t.rejected["queue_timeout"] += 1
                raise overloaded(f"no capacity within {self.timeout_s:g}s") from None
            raise

    def leave(self, tenant: TenantState | None = None, tokens: tuple[int, int] = (0, 0)) -> None:
        """The request ended (`tokens`: its prompt and completion tokens): its slot goes to
        the next waiter, or back."""
        t = tenant or self.default
        t.inflight -= 1
        t.ended(tokens)
        self.inflight -= 1
        if self._queued and self.inflight < self.limit:
            self._dispatch()

    # The queue --------------------------------------------------------------------------

    def _admit(self, t: TenantState) -> None:
        self.inflight += 1
        t.inflight += 1
        t.admitted += 1

    def _enqueue(self, t: TenantState, slot: asyncio.Future[None], work: int) -> None:
        """Tag the waiter: it starts when the class's virtual time or its tenant's last finish
        tag is reached, whichever is later; its own work moves the tenant's tag on."""
        now = self._virtual.get(t.priority, 0.0)
        start = max(now, t.finish)
        t.finish = start + (work + t.expected) / t.weight
        self._seq += 1
        if not t.waiting:
            self._backlogged.append(t)
        t.waiting.append((start, self._seq, slot))
        self._queued += 1

    def _dequeue(self, t: TenantState, slot: asyncio.Future[None]) -> None:
        for i, (_, _, waiter) in enumerate(t.waiting):
            if waiter is slot:
                del t.waiting[i]
                self._queued -= 1
                break
        if not t.waiting and t in self._backlogged:
            self._backlogged.remove(t)

    def _dispatch(self) -> None:
        """Hand one free slot to the waiter of the highest class with the least start tag."""
        t = min(self._backlogged, key=lambda s: (-s.priority, s.waiting[0][0], s.waiting[0][1]))
        start, _, slot = t.waiting.popleft()
        self._queued -= 1
        if not t.waiting:
            self._backlogged.remove(t)
        self._virtual[t.priority] = start
        self._admit(t)
        slot.set_result(None)


def tokens_of(trace: Trace | None, prompt_estimate: int) -> tuple[int, int]:
    """A finished request's prompt and completion tokens, from its usage (without one: the
    prompt estimate, and the reads that carried the stream's events)."""
    if trace is None:
        return prompt_estimate, 0
    completion = trace.completion_tokens
    if completion is None and trace.end is not None:
        completion = trace.gaps + 1
    return trace.prompt_tokens or prompt_estimate, completion or 0
