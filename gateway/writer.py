"""Where a streamed response goes: the one interface the relay writes through.

Two implementations: the short path's connection (gateway.protocol.Exchange), which writes
each event from the socket callback that read it, and `AsgiWriter` over any ASGI server's
`send`, which is plain ASGI and a task per event.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from starlette.types import Send

Headers = list[tuple[bytes, bytes]]


class Writer(Protocol):
    def start(self, status: int, headers: Headers) -> None:
        """The response's head; it goes out with the first body part."""

    def event(self, data: bytes) -> asyncio.Future | None:
        """Write a body part now, from any callback; a returned future means: wait for it
        before the next part (the client is slower than the worker)."""

    async def finish(self, data: bytes = b"") -> None:
        """The last body part; the response is complete."""

    def abort(self) -> None:
        """Drop the client, which stopped reading: nothing more is written, a pending write ends."""


class AsgiWriter:
    """A Writer over an ASGI `send`."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self._head: dict | None = None
        self._pending: asyncio.Future | None = None
        self._aborted = False

    def start(self, status: int, headers: Headers) -> None:
        self._head = {"type": "http.response.start", "status": status, "headers": headers}

    def event(self, data: bytes) -> asyncio.Future | None:
        if self._aborted:
            return None
        self._pending = asyncio.ensure_future(self._body(data, True))
        return self._pending

    def abort(self) -> None:
        """ASGI has no way to drop a connection: the pending send is cancelled, nothing more is
        sent, and under uvicorn (whose `send` is a method of its request cycle, which holds the
        transport) the connection is dropped at once; a plain close would wait for the client to
        read what is queued, forever."""
        self._aborted = True
        if self._pending is not None:
            self._pending.cancel()
        transport = getattr(getattr(self.send, "__self__", None), "transport", None)
        if isinstance(transport, asyncio.Transport):
            transport.abort()

    async def finish(self, data: bytes = b"") -> None:
        if not self._aborted:
            await self._body(data, False)

    async def _body(self, data: bytes, more: bool) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            await self.send(head)
        await self.send({"type": "http.response.body", "body": data, "more_body": more})
