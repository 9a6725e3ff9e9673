"""The upstream client: requests to workers over pooled keep-alive connections (gateway.http1).

aiohttp and httpx were measured first (bench/transports.py): both hand every chunk to the
reader through a task wake-up, which was most of the relay's CPU; gateway.http1 pushes
chunks to the relay from the socket callback instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from .config import Timeouts
from .errors import ConnectFailed, NoAnswer, UpstreamError, UpstreamStatus, UpstreamTimeout
from .http1 import ConnectionBroken, ConnectionPool, Response


class Upstream:
    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self.pool = ConnectionPool(timeouts.connect_s)

    async def close(self) -> None:
        self.pool.close()

    async def post(self, url: str, body: bytes, headers: bytes, on_sent: Callable[[Response], None]) -> Response:
        """Send a POST (`on_sent` sees the Response once written); then `answer` has the head.

        No timer here: the caller's watchdog entry bounds the wait for the answer, which
        is cheaper on the hot path than an asyncio timeout per request.
        """
        return await self._send("POST", url, headers, body, on_sent)

    async def answer(self, resp: Response) -> None:
        """Wait for the head; non-2xx raises UpstreamStatus with its body."""
        try:
            await resp.head
        except ConnectionBroken as err:
            raise NoAnswer.about(resp.url, err) from None
        except BaseException:
            resp.close()
            raise
        if resp.status >= 300:
            payload = await self.read(resp)
            raise UpstreamStatus(resp.status, payload, resp.headers.get("content-type", "application/json"))

    async def _send(
        self,
        method: str,
        url: str,
        headers: bytes = b"",
        body: bytes = b"",
        on_sent: Callable[[Response], None] | None = None,
    ) -> Response:
        try:
            return await self.pool.request(method, url, headers, body, on_sent)
        except OSError as err:  # TimeoutError included: the connect timeout
            reason = str(err) or f"no connection within {self.timeouts.connect_s:g}s"
            raise ConnectFailed(f"cannot connect to worker {url}: {reason}") from None
        except ConnectionBroken as err:  # a reused connection's retry failed too
            raise NoAnswer.about(url, err) from None

    async def read(self, resp: Response) -> bytes:
        try:
            async with asyncio.timeout(self.timeouts.between_chunks_s):
                return await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"worker {resp.url} stalled while sending its body") from None
        except ConnectionBroken as err:
            raise UpstreamError(f"worker {resp.url} broke off its response: {err}") from None
        finally:
            resp.release()

    async def call(
        self, method: str, url: str, headers: bytes, body: bytes, timeout_s: float
    ) -> tuple[int, str, bytes]:
        """One whole request within `timeout_s`: status, content type and body (the routes
        relayed whole: stored responses, admin fan-out, audio forms)."""
        resp: Response | None = None
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._send(method, url, headers, body)
                await resp.head
                return resp.status, resp.headers.get("content-type", "application/json"), await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"worker {url} did not answer within {timeout_s:g}s") from None
        except ConnectionBroken as err:
            raise NoAnswer.about(url, err) from None
        finally:
            if resp is not None:
                resp.release()

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        """A GET's status and body (health checks, model lists)."""
        resp: Response | None = None
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._send("GET", url)
                await resp.head
                return resp.status, await resp.read()
        finally:
            if resp is not None:
                resp.release()

    async def get_json(self, url: str, timeout_s: float) -> object:
        status, body = await self.get(url, timeout_s)
        if status != 200:
            raise UpstreamError(f"worker {url} answered {status}")
        return json.loads(body)

    async def get_ok(self, url: str, timeout_s: float) -> bool:
        status, _ = await self.get(url, timeout_s)
        return status == 200
