"""Concurrency limits with a bounded wait: circuit breaking in Envoy's sense."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping

from starlette.types import Receive

from .errors import ClientGone, GatewayError

RETRY_AFTER = {"retry-after": "1"}


def overloaded(what: str) -> GatewayError:
    return GatewayError(429, f"{what}; retry later", "overloaded", headers=dict(RETRY_AFTER))


class Admission:
    """At most `limit` requests in flight; up to `queue` more wait, each for `timeout_s`."""

    def __init__(self, limit: int, queue: int, timeout_s: float) -> None:
        self.limit = limit
        self.queue = queue
        self.timeout_s = timeout_s
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def enter(self) -> None:
        if self.inflight < self.limit and not self._waiters:
            self.inflight += 1
            return
        if len(self._waiters) >= self.queue:
            raise overloaded(f"the gateway has {self.inflight} requests in flight and a full queue")
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await asyncio.wait_for(asyncio.shield(slot), self.timeout_s)
        except (TimeoutError, asyncio.CancelledError) as err:
            if slot.done():
                self.leave()  # the slot was handed over just as we gave up
            else:
                slot.cancel()
                self._waiters.remove(slot)
            if isinstance(err, TimeoutError):
                raise overloaded(f"no capacity within {self.timeout_s:g}s") from None
            raise

    def leave(self) -> None:
        """Hand the slot to the oldest waiter, or give it back."""
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.inflight -= 1


class Capacity:
    """Wakes requests waiting for any worker of a pool to drop below its in-flight limit."""

    def __init__(self) -> None:
        self._freed = asyncio.Event()

    def freed(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._freed.wait(), timeout_s)


async def read_body(receive: Receive, headers: Mapping[bytes, bytes], limit: int) -> bytes:
    """The request body from ASGI `receive`: 413 past `limit` bytes, ClientGone on a disconnect."""
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > limit:
        raise body_too_large(limit)
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise body_too_large(limit)
        parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"request body exceeds {limit} bytes", "body_too_large")
