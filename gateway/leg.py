"""One upstream call ("leg"): endpoint choice with retries, the response, and its accounting."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp

from .errors import UpstreamError
from .pool import Endpoint, Pool, Role
from .router import Router
from .sse import DONE, EventFramer
from .upstream import ConnectFailed, iter_body
from .watchdog import Watched

log = logging.getLogger("pd_gateway")


class Leg:
    def __init__(self, router: Router, pool: Pool, role: Role, request_id: str, tokens: int = 0) -> None:
        self.router = router
        self.pool = pool
        self.role = role
        self.request_id = request_id
        self.tokens = tokens
        self.ep: Endpoint | None = None
        self.resp: aiohttp.ClientResponse | None = None
        self.watched: Watched | None = None
        self.aborted: str | None = None
        self._held = False

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "x-request-id": self.request_id}

    async def open(self, path: str, body: bytes) -> None:
        """Send the request, retrying other endpoints while none could be reached."""
        tried: set[Endpoint] = set()
        for attempt in range(self.router.retries + 1):
            ep = self.router.choose(self.pool, self.role, exclude=tried)
            ep.acquire(self.tokens)
            try:
                self.resp = await self.router.upstream.open(ep.url + path, body, self.headers)
            except ConnectFailed as err:
                ep.release(self.tokens)
                self.router.eject(ep, err.message)
                tried.add(ep)
                log.warning("rid=%s %s; retrying elsewhere (attempt %d)", self.request_id, err.message, attempt + 1)
                if attempt == self.router.retries:
                    raise
                continue
            except BaseException:
                ep.release(self.tokens)
                raise
            self.ep, self._held = ep, True
            return

    @property
    def status(self) -> int:
        assert self.resp is not None
        return self.resp.status

    @property
    def content_type(self) -> str:
        assert self.resp is not None
        return self.resp.headers.get("content-type", "application/json")

    async def read(self) -> bytes:
        """The whole (non-streaming) body; releases the endpoint."""
        assert self.resp is not None
        try:
            return await self.router.upstream.read(self.resp)
        finally:
            self.release()

    async def events(self) -> AsyncIterator[bytes]:
        """Runs of complete SSE events; any failure, or an end without [DONE], raises UpstreamError."""
        assert self.resp is not None
        t = self.router.config.timeouts
        self.watched = w = self.router.watchdog.watch(t.first_byte_s, t.total_s, self.resp.close)
        framer = EventFramer()
        last = b""
        try:
            async for data in iter_body(self.resp):
                w.progress += 1
                run = framer.feed(data)
                if run:
                    w.stall_s = t.between_chunks_s
                    last = run
                    yield run
        except UpstreamError as err:
            raise self._failure(err.message) from None
        if w.reason or self.aborted or not last.endswith(DONE):
            raise self._failure("the worker ended the stream before [DONE]")

    def _failure(self, message: str) -> UpstreamError:
        w = self.watched
        if w is not None and w.reason:
            return UpstreamError(f"{self.role} worker {self._where}: {w.reason}", 504, "timeout")
        if self.aborted:
            return UpstreamError(f"{self.role} leg aborted: {self.aborted}", 502, "aborted")
        return UpstreamError(f"{self.role} worker {self._where}: {message}")

    @property
    def _where(self) -> str:
        return self.ep.url if self.ep else "?"

    def abort(self, reason: str) -> None:
        """Close the upstream connection: the worker sees the request cancelled."""
        if self.aborted is None:
            self.aborted = reason
            if self.resp is not None:
                self.resp.close()

    def release(self) -> None:
        if self.watched is not None:
            self.router.watchdog.forget(self.watched)
            self.watched = None
        if self._held and self.ep is not None:
            self.ep.release(self.tokens)
            self._held = False
        if self.resp is not None:
            self.resp.release()

