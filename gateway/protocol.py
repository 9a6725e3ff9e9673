"""uvicorn's httptools protocol, with a short path for the OpenAI POST routes.

A POST to `/v1/completions` or `/v1/chat/completions` with a Content-Length body (what every
client sends) skips the ASGI scope, uvicorn's request cycle and the body's trip through
`receive`: the gateway is called once the body is complete, and its response goes out
through a lean `send` that puts the status line and headers in the same write as the first
body part (one syscall and one client wake-up less per response). Everything else (other
routes, chunked or oversized bodies, `Expect: 100-continue`, HTTP/1.0, pipelined requests,
upgrades) takes uvicorn's own path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)

from .app import FAST_ROUTES, FastPath
from .relay import run_now
from .requests import PATHS, Route

log = logging.getLogger("uvicorn.error")
_ROUTES = {path.encode(): route for path, route in FAST_ROUTES.items()}
_DISCONNECT: Message = {"type": "http.disconnect"}
_SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


class GatewayProtocol(HttpToolsProtocol):
    """Takes the short path where `_short_route` allows it; `self.cycle` is then an Exchange,
    which has the attributes uvicorn's own code reads (pipelining, shutdown, keep-alive)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = self.app if isinstance(self.app, FastPath) else None

    def on_headers_complete(self) -> None:
        short = self._short_route()
        if short is None:
            super().on_headers_complete()
            return
        route, headers = short
        self.cycle = Exchange(self, route, headers, self.parser.should_keep_alive())  # type: ignore[assignment]

    def _short_route(self) -> tuple[Route, dict[bytes, bytes]] | None:
        """The route and the headers (as the gateway reads them) of a request for the short path."""
        if self.gateway is None or self.limit_concurrency is not None or self.expect_100_continue:
            return None
        route = _ROUTES.get(self.url)
        parser = self.parser
        if route is None or parser.get_method() != b"POST" or parser.get_http_version() != "1.1":
            return None
        if parser.should_upgrade() or not (self.cycle is None or self.cycle.response_complete):
            return None
        headers = dict(self.headers)
        length = headers.get(b"content-length")
        if b"transfer-encoding" in headers or length is None or not length.isdigit():
            return None
        return (route, headers) if int(length) <= self.gateway.body_limit else None

    def on_body(self, body: bytes) -> None:
        if isinstance(self.cycle, Exchange):
            self.cycle.parts.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        exchange = self.cycle
        if not isinstance(exchange, Exchange):
            super().on_message_complete()
            return
        assert self.gateway is not None
        task = self.loop.create_task(exchange.run(self.gateway))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(self.cycle, Exchange):
            exchange, self.cycle = self.cycle, None  # type: ignore[assignment]
            exchange.lost()
        super().connection_lost(exc)


class Exchange:
    """One request on the short path: what the gateway's responses need of uvicorn's cycle."""

    def __init__(self, protocol: GatewayProtocol, route: Route, headers: dict[bytes, bytes], keep_alive: bool) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.route = route
        self.headers = headers
        self._header_list = protocol.headers  # this request's: a pipelined one gets a new list
        self.keep_alive = keep_alive
        self.parts: list[bytes] = []
        self.response_started = self.response_complete = self.disconnected = False
        self._head: list[bytes] | None = None  # rendered, written with the first body part
        self._wrote = False
        self._chunked = True
        self._remaining = 0
        self._gone: asyncio.Future[None] | None = None

    async def run(self, gateway: FastPath) -> None:
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        scope = {"type": "http", "method": "POST", "path": PATHS[self.route], "headers": self._header_list}
        try:
            await gateway.handle(self.route, self.headers, body, scope, self.receive, self.send)
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            self._fail()
        else:
            if not self.response_complete and not self.disconnected:
                log.error("ASGI callable returned without completing response.")
                self._fail()

    def _fail(self) -> None:
        if not self._wrote and not self.transport.is_closing():
            self.transport.write(_SERVER_ERROR)
        self.transport.close()

    async def receive(self) -> Message:
        """The body went to the gateway directly: `receive` only tells of the end (a disconnect)."""
        if not (self.disconnected or self.response_complete):
            if self._gone is None:
                self._gone = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._gone)
        return _DISCONNECT

    def lost(self) -> None:
        if not self.response_complete:
            self.disconnected = True
        self._wake()

    def _wake(self) -> None:
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def push(self, body: bytes) -> asyncio.Future | None:
        """A body part of a started response, written here and now: the relay's per-event
        path, without the ASGI message and coroutine of `send`. A future means "wait"."""
        if self._head is not None or not self._chunked or self.response_complete or self.protocol.flow.write_paused:
            return run_now(self.send({"type": "http.response.body", "body": body, "more_body": True}))
        if not self.disconnected and body:
            self.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
        return None

    async def send(self, message: Message) -> None:
        flow = self.protocol.flow
        if flow.write_paused and not self.disconnected:
            await flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self.response_started = True
            self._head = self._render_head(message["status"], message.get("headers", ()))
            return
        if self.response_complete or message["type"] != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}'.")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        out = self._head or []
        self._head = None
        if self._chunked:
            if body:
                out += (b"%x\r\n" % len(body), body, b"\r\n")
            if not more_body:
                out.append(b"0\r\n\r\n")
        else:
            self._remaining -= len(body)
            if self._remaining < 0:
                raise RuntimeError("Response content longer than Content-Length")
            out.append(body)
        if out:
            self.transport.write(b"".join(out))
            self._wrote = True
        if not more_body:
            if self._remaining:
                raise RuntimeError("Response content shorter than Content-Length")
            self._complete()

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
                self._chunked = True  # the app frames nothing itself; a chunked body is framed here
                continue
            elif name == b"connection" and b"close" in value.lower():
                close = True
            out += (name, b": ", value, b"\r\n")
        if close:
            self.keep_alive = False
        elif not self.keep_alive:
            out.append(b"connection: close\r\n")
        if status in (204, 304):
            self._chunked = False
        elif self._chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        return out

    def _complete(self) -> None:
        self.response_complete = True
        self._wake()
        if not self.keep_alive:
            self.transport.close()
        self.protocol.on_response_complete()
