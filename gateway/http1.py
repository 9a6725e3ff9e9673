"""A small HTTP/1.1 client on asyncio protocols and httptools, pooled per origin.

It exists for the relay's hot path: a worker's body bytes reach the consumer from
`data_received` itself, with no task wake-up or async-generator step per chunk
(aiohttp costs both; see bench/results/relay.md). A consumer that cannot take more returns a
future, and the connection stops reading until it is done: backpressure to the worker.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import httptools

OnData = Callable[[bytes], "asyncio.Future | None"]
OnEnd = Callable[["Exception | None"], None]
MAX_HEAD_BYTES = 64 * 1024  # a worker's response head, interim (1xx) heads included
MAX_HEADERS = 256


class ConnectionBroken(Exception):
    """The connection closed or broke before the response was complete (not an OSError:
    those mean the connection could not be made)."""


def header_lines(headers: Mapping[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")


@functools.lru_cache(maxsize=4096)
def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path-and-query) of an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


class Response:
    """One response: status and headers, then the body, buffered or pushed to a consumer."""

    def __init__(self, conn: Connection, url: str) -> None:
        self.conn = conn
        self.url = url
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.complete = False
        self.aborted = False  # closed by its caller: never retried
        self.error: Exception | None = None
        self._buffer: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._on_data: OnData | None = None
        self._on_end: OnEnd | None = None
        self._backlog: deque[bytes] = deque()
        self._blocked = False
        self._consumer: tuple[OnData, OnEnd] | None = None

    # --- consumer side

    async def read(self) -> bytes:
        """The whole body."""
        if not self.complete and self.error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.error is not None:
            raise self.error
        return b"".join(self._buffer)

    def stream(self, on_data: OnData, on_end: OnEnd) -> None:
        """Push body bytes to `on_data` as they arrive, then call `on_end` (None: complete).

        Before the head, this waits for it: a 2xx head starts the push from the same socket
        callback, any other status leaves the body to `read`."""
        if not self.head.done():
            self._consumer = (on_data, on_end)
            return
        self._on_data, self._on_end = on_data, on_end
        self._backlog.extend(self._buffer)
        self._buffer = []
        self._drain()

    def close(self) -> None:
        """Abort: the connection is closed (the worker sees the request cancelled); a no-op
        once released, when the connection may be serving another request."""
        self.aborted = True
        if self.conn.response is self:
            self.conn.close()

    def release(self) -> None:
        """Done with it: a complete response gives its connection back to the pool."""
        self.conn.done(self)

    # --- connection side

    def _head_done(self, status: int) -> None:
        self.status = status
        self.head.set_result(None)
        if self._consumer is not None and status < 300:
            self.stream(*self._consumer)

    def _body(self, data: bytes) -> None:
        if self._on_data is None:
            self._buffer.append(data)
        elif self._blocked or self._backlog:
            self._backlog.append(data)
        else:
            self._push(data)

    def _push(self, data: bytes) -> None:
        assert self._on_data is not None
        wait = self._on_data(data)
        if wait is not None and not wait.done():
            self._blocked = True
            self.conn.pause()
            wait.add_done_callback(self._unblock)

    def _unblock(self, _: asyncio.Future) -> None:
        self._blocked = False
        self._drain()
        if not self._blocked:
            self.conn.resume()

    def _drain(self) -> None:
        while self._backlog and not self._blocked:
            self._push(self._backlog.popleft())
        if not self._blocked and not self._backlog and (self.complete or self.error is not None):
            self._finish()

    def _end(self, error: Exception | None) -> None:
        if self.complete or self.error is not None:
            return
        if error is None:
            self.complete = True
        else:
            self.error = error
            if not self.head.done():
                self.head.set_exception(error)
                self.head.exception()  # retrieved: an abandoned open() must not log it
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._on_end is not None and not self._blocked and not self._backlog:
            self._finish()

    def _finish(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self.error)


class Connection(asyncio.Protocol):
    """One keep-alive connection to a worker; one request at a time."""

    def __init__(self, pool: ConnectionPool, origin: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.used = False  # has answered a request before: a failure may be a stale keep-alive
        self.got_bytes = False
        self.head_bytes = 0  # of the response's head(s) so far, bounded by MAX_HEAD_BYTES
        self.header_count = 0
        self.interim = False  # the message being parsed is a 1xx: skipped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        resp = self.response
        if resp is None:
            return
        if resp.head.done() and not resp.complete and self._until_close(resp):
            resp._end(None)  # a body delimited by the connection's end
        else:
            resp._end(ConnectionBroken(f"connection closed: {exc}" if exc else "connection closed by the worker"))

    @staticmethod
    def _until_close(resp: Response) -> bool:
        return "content-length" not in resp.headers and "chunked" not in resp.headers.get("transfer-encoding", "")

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        resp = self.response
        try:
            self.parser.feed_data(data)
            if resp is not None and not resp.head.done():  # a head still incomplete after this read
                self.head_bytes += len(data)
                self._bound_head()
        except httptools.HttpParserError as err:
            if self.response is not None:
                self.response._end(ConnectionBroken(f"invalid HTTP from the worker: {err}"))
            self.close()

    def _bound_head(self) -> None:
        if self.head_bytes > MAX_HEAD_BYTES or self.header_count > MAX_HEADERS:
            raise httptools.HttpParserError(f"response head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.head_bytes += len(name) + len(value) + 4
        self._bound_head()
        if self.response is not None:
            self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        resp = self.response
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the answer follows
            if status == 101:
                raise httptools.HttpParserError("the worker switched protocols")
            self.interim = True
            if resp is not None:
                resp.headers.clear()
            return
        if resp is not None and not resp.head.done():
            resp._head_done(status)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        resp = self.response
        if resp is not None:
            if not self.parser.should_keep_alive():
                self.closed = True  # not reusable; closed when released
            resp._end(None)

    # --- used by Response and the pool

    def request(self, head: bytes, body: bytes, url: str) -> Response:
        assert self.transport is not None
        self.response = resp = Response(self, url)
        self.got_bytes = False
        self.head_bytes = self.header_count = 0
        self.transport.write(head + body)  # one segment for the usual small body
        return resp

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def done(self, resp: Response) -> None:
        if self.response is not resp:
            return
        self.response = None
        if resp.complete and not self.closed:
            self.used = True
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Idle keep-alive connections per origin, reused most-recent first."""

    def __init__(self, connect_timeout_s: float, max_idle_per_origin: int = 1024) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle_per_origin
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def request(
        self,
        method: str,
        url: str,
        headers: bytes = b"",
        body: bytes = b"",
        on_sent: Callable[[Response], None] | None = None,
    ) -> Response:
        """Send the request; returns the Response (await `response.head` for the head).

        `headers` are header lines, each ending in CRLF (`header_lines` makes them).

        A reused connection that breaks before any byte of the answer was probably closed
        by the worker while idle: that case is retried once on a new connection, so on a
        reused connection this returns with the head; `on_sent` sees each Response as soon
        as its request is written.
        """
        scheme, host, port, path = split_url(url)
        origin = (host, port, scheme == "https")
        head = b"%s %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-length: %d\r\n%s\r\n" % (
            method.encode(),
            path.encode(),
            host.encode(),
            port,
            len(body),
            headers,
        )
        conn = self._take(origin)
        if conn is None:
            conn = await self._connect(origin)
        resp = conn.request(head, body, url)
        if on_sent is not None:
            on_sent(resp)
        if not conn.used:
            return resp
        try:
            await resp.head
        except ConnectionBroken:
            if conn.got_bytes or resp.aborted:
                raise
            conn = await self._connect(origin)
            resp = conn.request(head, body, url)
            if on_sent is not None:
                on_sent(resp)
        except BaseException:  # cancelled: the request must not stay open at the worker
            conn.close()
            raise
        return resp

    def _take(self, origin: tuple[str, int, bool]) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, origin: tuple[str, int, bool]) -> Connection:
        host, port, tls = origin
        loop = asyncio.get_running_loop()
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        async with asyncio.timeout(self.connect_timeout_s):
            _, conn = await loop.create_connection(
                lambda: Connection(self, origin), host, port, ssl=self._ssl if tls else None
            )
        return conn

    def put(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= self.max_idle:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, conn: Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
