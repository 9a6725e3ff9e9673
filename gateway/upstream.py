"""The upstream client: one pooled aiohttp session to all workers.

aiohttp was chosen over httpx by measurement (see bench/README figures): per relayed
chunk it costs about a third of httpx's default transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from .config import Timeouts
from .errors import UpstreamError, UpstreamStatus


class Upstream:
    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeouts.connect_s, sock_read=None
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self, url: str, body: bytes, headers: Mapping[str, str], first_byte_s: float | None = None
    ) -> aiohttp.ClientResponse:
        """POST and wait for the response head; non-2xx raises UpstreamStatus with its body."""
        limit = first_byte_s or self.timeouts.first_byte_s
        try:
            async with asyncio.timeout(limit):
                resp = await self.session.post(url, data=body, headers=headers)
                if resp.status >= 300:
                    payload = await resp.read()
                    resp.release()
                    raise UpstreamStatus(
                        resp.status, payload, resp.headers.get("content-type", "application/json")
                    )
                return resp
        except TimeoutError:
            raise UpstreamError(f"worker {url} sent no response within {limit:g}s", 504, "timeout") from None
        except aiohttp.ClientConnectorError as err:
            raise ConnectFailed(f"cannot connect to worker {url}: {err.os_error or err}") from None
        except aiohttp.ClientError as err:
            raise NoAnswer(f"worker {url} failed before answering: {err!r}") from None

    async def read(self, resp: aiohttp.ClientResponse) -> bytes:
        try:
            async with asyncio.timeout(self.timeouts.between_chunks_s):
                return await resp.read()
        except TimeoutError:
            raise UpstreamError(f"worker {resp.url} stalled while sending its body", 504, "timeout") from None
        except aiohttp.ClientError as err:
            raise UpstreamError(f"worker {resp.url} broke off its response: {err!r}") from None
        finally:
            resp.release()

    async def get_json(self, url: str, timeout_s: float) -> object:
        async with asyncio.timeout(timeout_s):
            async with self.session.get(url) as resp:
                resp.raise_for_status()
                return await resp.json(content_type=None)

    async def get_ok(self, url: str, timeout_s: float) -> bool:
        async with asyncio.timeout(timeout_s):
            async with self.session.get(url) as resp:
                await resp.read()
                return resp.status == 200


class Retryable(UpstreamError):
    """The worker produced nothing: the request may go to another worker."""


class ConnectFailed(Retryable):
    """The worker could not be reached at all."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 502, "worker_unreachable")


class NoAnswer(Retryable):
    """The connection broke before the worker answered (it died, or closed a pooled connection)."""
