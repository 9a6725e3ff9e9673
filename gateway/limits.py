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


def unavailable(what: str, code: str) -> GatewayError:
    return GatewayError(503, f"{what}; retry later", code, headers=dict(RETRY_AFTER))


class FrontDoor:
    """What the gateway holds before a request is admitted, gateway-wide: open connections, and
    the request bodies it buffers (counted from the head that announces one until the request
    ends). Beyond either bound a request is answered 503 before anything is read."""

    def __init__(self, max_connections: int, max_body_bytes: int) -> None:
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.connections = 0
        self.body_bytes = 0

    def connect(self) -> GatewayError | None:
        """Count a new connection, or say why it is refused."""
        if self.connections >= self.max_connections:
            return unavailable(f"the gateway has {self.connections} connections open", "too_many_connections")
        self.connections += 1
        return None

    def disconnect(self) -> None:
        self.connections -= 1

    def take(self, size: int) -> GatewayError | None:
        """Count `size` more body bytes held, or say why they are refused."""
        if self.body_bytes + size > self.max_body_bytes:
            what = f"the gateway holds {self.body_bytes} bytes of request bodies (at most {self.max_body_bytes})"
            return unavailable(what, "too_many_body_bytes")
        self.body_bytes += size
        return None

    def give_back(self, size: int) -> None:
        self.body_bytes -= size


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


async def read_body(receive: Receive, headers: Mapping[bytes, bytes], limit: int, front: FrontDoor) -> bytes:
    """The request body from ASGI `receive`: 413 past `limit` bytes, 503 past the front door's
    bound, ClientGone on a disconnect. Its bytes stay counted at the front door: the caller gives
    back `len(body)` when the request ends."""
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > limit:
        raise body_too_large(limit)
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            part = message.get("body", b"")
            if size + len(part) > limit:
                raise body_too_large(limit)
            refused = front.take(len(part))
            if refused is not None:
                raise refused
            size += len(part)
            parts.append(part)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)
    except BaseException:
        front.give_back(size)
        raise


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"request body exceeds {limit} bytes", "body_too_large")
