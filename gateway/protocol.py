"""uvicorn's httptools protocol, with request-head bounds and a short path for the OpenAI routes.

Bounds, on every route: the head must arrive within `limits.header_timeout_s` of its first
byte and the body may idle at most `limits.body_timeout_s` (else 408 and close), and a head
over `limits.max_header_bytes` or `limits.max_headers` is refused (431).

Front door, before any byte of a body is read: a connection over `limits.max_connections` is
answered 503 and closed; a POST to an OpenAI route is refused at its head (and the connection
closed) when its API key is wrong (401), its Content-Length is over `limits.max_body_bytes`
(413), or the bodies already held would pass `limits.max_buffered_body_bytes` (503).

Short path: a POST to an OpenAI route with a Content-Length body (what every client sends)
skips the ASGI scope, uvicorn's request cycle and the body's trip through `receive`: the
handler is called once the body is complete, and writes through an `Exchange`. Everything
else (other routes, chunked or oversized bodies, `Expect: 100-continue`, pipelined requests,
upgrades) takes uvicorn's own path.

This subclasses uvicorn's protocol and reads its state, so it is tied to the uvicorn versions
it was tested with (`TESTED_UVICORN`); with another version the gateway runs on plain uvicorn
and says so (see `server.http_protocol`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .app import FastPath
from .auth import authorization
from .errors import GatewayError, envelope
from .exchange import Exchange
from .limits import body_too_large
from .routes import ROUTES, Route

TESTED_UVICORN = ((0, 55),)  # (major, minor) releases this module was tested with
_LINGER_S = 2.0
_ROUTES = {path.encode(): route for path, route in ROUTES.items()}


def supported() -> bool:
    return tuple(int(part) for part in uvicorn.__version__.split(".")[:2]) in TESTED_UVICORN


class _HeadRefused(Exception):
    """Stops the parser once a head was refused."""


class GatewayProtocol(HttpToolsProtocol):
    """Takes the short path where `_short_route` allows it; `self.cycle` is then an Exchange."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = self.app if isinstance(self.app, FastPath) else None
        self.limits = self.gateway.config.limits if self.gateway is not None else None
        self.front = self.gateway.handler.gateway.front if self.gateway is not None else None
        self._counted = False  # this connection is counted at the front door
        self.write_timeout_s = self.gateway.config.timeouts.client_write_s if self.gateway is not None else 30.0
        # One timer per connection, re-armed only when it fires early: each phase of a request
        # moves `_deadline` (an attribute write) instead of cancelling and creating a timer.
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._in_head = False
        self._head_bytes = 0
        self._refused = False

    # Bounds on the request head and body --------------------------------------------

    def _wait(self, timeout_s: float) -> None:
        """The next read must come within `timeout_s` (`_deadline = None`: nothing is awaited)."""
        self._deadline = deadline = self.loop.time() + timeout_s
        if self._timer is not None and self._timer.when() > deadline:  # due too late: replace it
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._check)
            return
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            return  # a response is on its way (the late part is a pipelined request): let it finish
        self._refuse(408, "the request did not arrive in time", "request_timeout")

    def _refuse_with(self, err: GatewayError) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in err.headers.items())
        self._refuse(err.status, err.message, err.code or str(err.status), extra.encode("latin-1"))

    def _refuse(self, status: int, message: str, code: str, extra: bytes = b"") -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        body = json.dumps(envelope(message, status, code)).encode()
        self.transport.write(
            b"".join(
                (
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    extra,
                    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
                    body,
                )
            )
        )
        # A lingering close: closed at once with unread input, the socket would send a reset that
        # can destroy the answer before the client reads it. So: send it and our end of the
        # stream, discard what still comes, and close when the client does or after a while.
        self._deadline = None
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.close_within)
        else:
            self.close_within()

    def close_within(self) -> None:
        """Close once what is queued for the client is sent; a client that has not read it all
        within `timeouts.client_write_s` is dropped (a plain close would wait for it forever,
        holding the connection)."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            self.loop.call_later(self.write_timeout_s, transport.abort)

    def timeout_keep_alive_handler(self) -> None:
        self.close_within()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.front is not None:
            refused = self.front.connect()
            if refused is not None:
                self._refuse_with(refused)
                return
            self._counted = True
        if self.limits is not None:
            self._wait(self.limits.header_timeout_s)  # a connection that never sends a byte

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and self.limits is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"the request head exceeds {self.limits.max_header_bytes} bytes", "head_too_large")

    def send_400_response(self, msg: str) -> None:
        """A head httptools refuses (a bad Content-Length, say): 400 in the OpenAI envelope."""
        if not self._refused:
            self._refuse(400, f"the request is not valid HTTP/1.1: {msg}", "invalid_http")

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.limits is not None and not self._refused:
            self._in_head, self._head_bytes = True, 0
            self._wait(self.limits.header_timeout_s)

    # The short path -------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self.limits is not None:
            # The head's bytes are bounded as they arrive (data_received), its count here; and its
            # bytes again, for a head that arrived whole in one read (the parser saw it at once).
            if len(self.headers) > self.limits.max_headers:
                self._refuse(431, f"the request has more than {self.limits.max_headers} headers", "too_many_headers")
                raise _HeadRefused
            if len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > self.limits.max_header_bytes:
                self._refuse(431, f"the request head exceeds {self.limits.max_header_bytes} bytes", "head_too_large")
                raise _HeadRefused
            self._in_head = False
            self._wait(self.limits.body_timeout_s)
        short = self._short_route()
        if short is None:
            super().on_headers_complete()
            return
        route, headers, version = short
        refused = self._at_the_door(headers)
        if refused is not None:
            self._refuse_with(refused)  # what is left of this read is dropped (on_body, on_message_complete)
            return
        exchange = Exchange(self, route, headers, version, self.parser.should_keep_alive())
        exchange.hold_body(int(headers[b"content-length"]))
        self.cycle = exchange  # type: ignore[assignment]

    def _short_route(self) -> tuple[Route, dict[bytes, bytes], str] | None:
        """The route, headers (as the gateway reads them) and HTTP version of a short-path request."""
        if self.gateway is None or self.limit_concurrency is not None or self.expect_100_continue:
            return None
        route = _ROUTES.get(self.url)
        parser = self.parser
        version = parser.get_http_version()
        if route is None or parser.get_method() != b"POST" or version not in ("1.1", "1.0"):
            return None
        if parser.should_upgrade() or not (self.cycle is None or self.cycle.response_complete):
            return None
        headers = dict(self.headers)
        length = headers.get(b"content-length")
        if b"transfer-encoding" in headers or length is None or not length.isdigit():
            return None
        return route, headers, version

    def _at_the_door(self, headers: dict[bytes, bytes]) -> GatewayError | None:
        """Why a short-path request is refused before its body is read: its key, its size, or
        the bodies the gateway holds already; None: it may come in (its body is then counted)."""
        assert self.gateway is not None and self.front is not None
        try:
            tenants = self.gateway.handler.gateway.tenants
            tenants.identify(authorization(headers, self.headers))  # a tenant's key, or one of auth.api_keys
        except GatewayError as err:
            return err
        size = int(headers[b"content-length"])
        if size > self.gateway.body_limit:
            return body_too_large(self.gateway.body_limit)
        return self.front.take(size)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        if self.limits is not None:
            self._wait(self.limits.body_timeout_s)
        if isinstance(self.cycle, Exchange):
            self.cycle.parts.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._deadline = None
        if self._refused:
            return
        exchange = self.cycle
        if not isinstance(exchange, Exchange):
            super().on_message_complete()
            return
        assert self.gateway is not None
        task = self.loop.create_task(exchange.run(self.gateway))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._counted and self.front is not None:
            self._counted = False
            self.front.disconnect()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if isinstance(self.cycle, Exchange):
            exchange, self.cycle = self.cycle, None
            exchange.lost()
        super().connection_lost(exc)
