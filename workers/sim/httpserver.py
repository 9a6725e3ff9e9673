"""Minimal HTTP/1.1 server on asyncio.Protocol + httptools.

One request is served at a time per connection (pipelined requests queue up).
A handler gets the `Request` and the `HttpConnection`, and must end the exchange
with `send()` or `end_stream()` (or `abort()`).  `on_lost` lets the handler stop
work as soon as the peer goes away.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httptools

REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
MAX_BODY = 64 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep_alive: bool


class Handler(Protocol):
    def handle(self, conn: HttpConnection, req: Request) -> None: ...


def status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class HttpConnection(asyncio.Protocol):
    def __init__(self, handler: Handler, connections: set[HttpConnection]) -> None:
        self._handler = handler
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._busy = False
        self._keep_alive = True
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        self.closed = False
        self.on_lost: Callable[[], None] | None = None

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fatal(400, "upgrade not supported")
        except httptools.HttpParserError as exc:
            self._fatal(400, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._connections.discard(self)
        self._queue.clear()
        cb, self.on_lost = self.on_lost, None
        if cb is not None:
            cb()

    # -- httptools callbacks ---------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_len = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > MAX_BODY:
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        req = Request(
            method=self._parser.get_method().decode(),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            keep_alive=self._parser.should_keep_alive(),
        )
        self._queue.append(req)
        if not self._busy:
            self._next()

    # -- response API -----------------------------------------------------
    def _next(self) -> None:
        if self.closed or not self._queue:
            return
        self._busy = True
        req = self._queue.popleft()
        self._keep_alive = req.keep_alive
        self._handler.handle(self, req)

    def _finish(self) -> None:
        self._busy = False
        self.on_lost = None
        if not self._keep_alive:
            self.close()
        elif self._queue:
            self._next()

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytearray:
        out = bytearray(status_line(status))
        for name, value in headers:
            out += f"{name}: {value}\r\n".encode("latin-1")
        if not self._keep_alive:
            out += b"connection: close\r\n"
        return out

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        if self.closed or self._transport is None:
            return
        hdrs = [("content-type", content_type), ("content-length", str(len(body)))]
        out = self._head(status, hdrs + (headers or []))
        out += b"\r\n"
        out += body
        self._transport.write(bytes(out))
        self._finish()

    def send_json(self, status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> None:
        self.send(status, json.dumps(obj, separators=(",", ":")).encode(), headers=headers)

    def start_stream(
        self, status: int, content_type: str, headers: list[tuple[str, str]] | None = None, first: bytes = b""
    ) -> None:
        if self.closed or self._transport is None:
            return
        hdrs = [("content-type", content_type), ("transfer-encoding", "chunked")]
        out = self._head(status, hdrs + (headers or []))
        out += b"\r\n"
        if first:
            out += chunk(first)
        self._transport.write(bytes(out))

    def write_chunk(self, data: bytes) -> None:
        if data and not self.closed and self._transport is not None:
            self._transport.write(chunk(data))

    def end_stream(self, last: bytes = b"") -> None:
        if self.closed or self._transport is None:
            return
        self._transport.write((chunk(last) if last else b"") + b"0\r\n\r\n")
        self._finish()

    def abort(self) -> None:
        """Drop the connection without finishing the response (fault injection)."""
        self.on_lost = None
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _fatal(self, status: int, message: str) -> None:
        if self._transport is None or self.closed:
            return
        body = json.dumps(
            {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
        ).encode()
        self._keep_alive = False
        self._queue.clear()
        if not self._busy:
            self.send(status, body)
        else:
            self.close()
