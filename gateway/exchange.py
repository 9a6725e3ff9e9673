"""One request on the short path, and the `Writer` its response goes out through.

The head is rendered once and written with the first body part (one syscall and one client
wake-up less per response); a streamed event is written from the callback that read it from
the worker, unless the client is slower than the worker (then the relay is told to wait, and
bounds that wait: `abort` drops a client that does not read).

The exchange owns its request body's count at the front door (`hold_body`) until the handler
is done with the body, or until the connection is lost before the body was complete.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

from .routes import PATHS, Route
from .writer import Headers

if TYPE_CHECKING:
    from .app import FastPath
    from .protocol import GatewayProtocol

log = logging.getLogger("uvicorn.error")
_DISCONNECT: Message = {"type": "http.disconnect"}
_SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


class Exchange:
    """What the gateway's responses need of uvicorn's request cycle (pipelining, shutdown and
    keep-alive read `response_complete` and `keep_alive`), and a Writer."""

    def __init__(
        self, protocol: GatewayProtocol, route: Route, headers: dict[bytes, bytes], http_version: str, keep_alive: bool
    ) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.route = route
        self.headers = headers
        self._header_list = protocol.headers  # this request's: a pipelined one gets a new list
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.parts: list[bytes] = []
        self.response_started = self.response_complete = self.disconnected = False
        self._head: list[bytes] | None = None  # rendered, written with the first body part
        self._wrote = False
        self._flow = protocol.flow
        self._streaming = False  # head written, chunked, not over: an event is one chunk, written at once
        # Framing: chunked, or Content-Length (`_remaining`), or to the end of the connection
        # (HTTP/1.0 cannot read chunks).
        self._chunked = True
        self._remaining: int | None = None
        self._gone: asyncio.Future[None] | None = None
        self._held = 0  # body bytes counted at the front door
        self._running = False

    def hold_body(self, size: int) -> None:
        """The body's `size` bytes were counted at the front door: given back when it is dropped."""
        self._held = size

    def _release_body(self) -> None:
        if self._held:
            self.protocol.front.give_back(self._held)  # type: ignore[union-attr]
            self._held = 0

    async def run(self, app: FastPath) -> None:
        self._running = True
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts = []
        scope = {
            "type": "http",
            "method": "POST",
            "path": PATHS[self.route],
            "headers": self._header_list,
            "http_version": self.http_version,
        }
        try:
            await app.handler(self.route, self.headers, self._header_list, body, scope, self.receive, self.send, self)
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            self._fail()
        else:
            if not self.response_complete and not self.disconnected:
                log.error("ASGI callable returned without completing response.")
                self._fail()
        finally:
            self._release_body()

    def _fail(self) -> None:
        if not self._wrote and not self.transport.is_closing():
            self.transport.write(_SERVER_ERROR)
        self.protocol.close_within()

    async def receive(self) -> Message:
        """The body went to the gateway directly: `receive` only tells of the end (a disconnect)."""
        if not (self.disconnected or self.response_complete):
            if self._gone is None:
                self._gone = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._gone)
        return _DISCONNECT

    def lost(self) -> None:
        self._streaming = False
        if not self.response_complete:
            self.disconnected = True
        if not self._running:  # the body never reached the handler
            self._release_body()
        self._wake()

    def abort(self) -> None:
        """Drop the client (it stopped reading): what is queued for it is discarded, and the
        connection is closed at once (a plain close would wait for the client to read it all)."""
        self._streaming = False
        self.disconnected = True
        self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    # Writer ----------------------------------------------------------------------

    def start(self, status: int, headers: Headers) -> None:
        if self.response_started:
            raise RuntimeError("the response has already started")
        self.response_started = True
        self._head = self._render_head(status, headers)

    def event(self, data: bytes) -> asyncio.Future | None:
        if self._flow.write_paused:
            if not self.disconnected:
                return asyncio.ensure_future(self._drained_write(data))
        elif self._streaming and data:  # the relay's per-event path: one chunk, one write
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            return None
        self._write(data, False)
        return None

    async def finish(self, data: bytes = b"") -> None:
        await self._drain()
        self._write(data, True)

    async def _drained_write(self, data: bytes) -> None:
        await self._drain()
        self._write(data, False)

    async def _drain(self) -> None:
        if self._flow.write_paused and not self.disconnected:
            await self._flow.drain()

    async def _drain_within(self) -> None:
        """`_drain` for a whole response, bounded by `timeouts.client_write_s` (a stream's
        waits are the relay's to bound)."""
        if self._flow.write_paused and not self.disconnected:
            try:
                async with asyncio.timeout(self.protocol.write_timeout_s):
                    await self._flow.drain()
            except TimeoutError:
                self.abort()

    def _write(self, data: bytes, last: bool) -> None:
        if self.disconnected or self.response_complete:
            return
        if not self.response_started:
            raise RuntimeError("a body part before the response's start")
        out = self._head or []
        self._head = None
        if self._chunked:
            if data:
                out += (b"%x\r\n" % len(data), data, b"\r\n")
            if last:
                out.append(b"0\r\n\r\n")
        else:
            if self._remaining is not None:
                self._remaining -= len(data)
                if self._remaining < 0 or (last and self._remaining):
                    raise RuntimeError("Response content does not match its Content-Length")
            out.append(data)
        if out:
            self.transport.write(b"".join(out))
            self._wrote = True
        if last:
            self._complete()
        else:
            self._streaming = self._chunked

    # ASGI send, for whole responses (errors, non-streamed answers) ---------------

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start(message["status"], message.get("headers", []))
        elif message["type"] == "http.response.body":
            await self._drain_within()
            self._write(message.get("body", b""), not message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}'.")

    def _render_head(self, status: int, headers: Any) -> list[bytes]:
        # One search over all names and one over all values (tab is allowed in values).
        headers = (*self.protocol.server_state.default_headers, *headers)
        names, values = b"".join(n for n, _ in headers), b"\t".join(v for _, v in headers)
        if HEADER_RE.search(names) or HEADER_VALUE_RE.search(values):
            raise RuntimeError("Invalid HTTP header.")
        out = [STATUS_LINE[status]]
        close = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self._chunked:
                self._chunked = False
                self._remaining = int(value)
            elif name == b"transfer-encoding":
                continue  # the app frames nothing itself; the body is framed here
            elif name == b"connection" and b"close" in value.lower():
                close = True
            out += (name, b": ", value, b"\r\n")
        if status in (204, 304):
            self._chunked, self._remaining = False, 0
        elif self._chunked and self.http_version == "1.0":
            self._chunked, self.keep_alive = False, False  # the body ends where the connection does
        elif self._chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        if close:
            self.keep_alive = False
        elif not self.keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        return out

    def _complete(self) -> None:
        self._streaming = False
        self.response_complete = True
        self._wake()
        if not self.keep_alive:
            self.protocol.close_within()
        self.protocol.on_response_complete()
