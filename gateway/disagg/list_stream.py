"""The streams of a prompt list's parts (prompt_list.py), merged into one as vLLM streams a list:
every chunk under one id, each choice's index `prompt index * n + choice index`, one usage
chunk (summed) before the one `[DONE]`.

Each part's StreamRelay writes to a `PartWriter` instead of the client; its runs go to one
queue, bounded like a leg's (a part whose runs the client has not taken is held back).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, MutableMapping
from typing import Any

from starlette.responses import Response

from ..errors import GatewayError, UpstreamError, sse_event
from ..payload import dumps, load_json
from ..relay import StreamRelay
from ..sse import DONE, event_data, split_events
from ..writer import Headers

_QUEUED_RUNS = 64
_SCOPE = {"type": "http", "method": "POST"}


class PartWriter:
    """Where one part's relay writes: its runs, its end, or its error event, to the merge."""

    def __init__(self, merged: MergedStream, index: int) -> None:
        self.merged, self.index = merged, index

    def start(self, status: int, headers: Headers) -> None:
        pass

    def event(self, data: bytes) -> asyncio.Future | None:
        return self.merged.put(self.index, data)

    async def finish(self, data: bytes = b"") -> None:
        self.merged.end(self.index, data or None)


class MergedStream:
    def __init__(self, parts: int, choices: int, include_usage: bool) -> None:
        self.parts, self.choices, self.include_usage = parts, choices, include_usage
        loop = asyncio.get_running_loop()
        self._firsts: list[asyncio.Future[None]] = [loop.create_future() for _ in range(parts)]
        self._queue: deque[tuple[int, bytes | None, bytes | None]] = deque()  # (part, run, error event)
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task] = []
        self._over = [False] * parts  # each part's end is queued once
        self._ended = 0
        self._id: str | None = None
        self._usages: list[dict | None] = [None] * parts
        self._usage_chunk: dict | None = None

    def writer(self, index: int) -> PartWriter:
        return PartWriter(self, index)

    # The parts' side -----------------------------------------------------------------

    async def run(self, index: int, serving: Awaitable[Response | StreamRelay]) -> None:
        """Serve part `index` and relay its stream into the merge."""
        relay = await serving
        if not isinstance(relay, StreamRelay):  # an answer that is no stream: a refusal
            raise refusal_of(relay.status_code, bytes(relay.body))
        failed: list[Any] = []

        async def send(message: MutableMapping[str, Any]) -> None:  # the relay's own answer: it failed before any event
            failed.append(message)

        try:
            await relay(_SCOPE, _never, send)
        finally:
            if not self._over[index]:  # it ended without a word (cancelled, a bug): the merge must not wait
                self.end(index, sse_event(UpstreamError("a prompt's stream ended early")))
        if failed:
            raise refusal_of(failed[0].get("status", 502), b"".join(m.get("body", b"") for m in failed[1:]))

    def put(self, index: int, run: bytes) -> asyncio.Future | None:
        if not self._firsts[index].done():
            self._firsts[index].set_result(None)
        self._push((index, run, None))
        if len(self._queue) >= _QUEUED_RUNS and self._room is None:
            self._room = asyncio.get_running_loop().create_future()
        return self._room

    def end(self, index: int, error_event: bytes | None) -> None:
        if not self._over[index]:
            self._over[index] = True
            self._push((index, None, error_event))

    def _push(self, item: tuple[int, bytes | None, bytes | None]) -> None:
        self._queue.append(item)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # The client's side ---------------------------------------------------------------

    async def started(self, tasks: list[asyncio.Task]) -> None:
        """Wait for every part's first event; a part that fails before it fails the request
        (with its status, as a single request would)."""
        self._tasks = tasks
        for first, task in zip(self._firsts, tasks, strict=True):
            done, _ = await asyncio.wait([first, task], return_when=asyncio.FIRST_COMPLETED)
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def runs(self) -> AsyncIterator[bytes]:
        """The merged stream, run by run, ending with the usage chunk and [DONE]."""
        while self._ended < self.parts:
            while not self._queue:
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
            index, run, error = self._queue.popleft()
            if self._room is not None and len(self._queue) <= _QUEUED_RUNS // 2:
                self._room.set_result(None)
                self._room = None
            if run is None:
                self._ended += 1
                if error is not None:
                    raise _stream_error(error)
                continue
            out = b"".join(self._rewrite(index, e) for e in split_events(run))
            if out:
                yield out
        yield self._usage() + DONE

    def _rewrite(self, index: int, event: bytes) -> bytes:
        data = event_data(event)
        if data is None or data == b"[DONE]":
            return b""
        chunk = load_json(data, "decode worker")
        self._id = self._id or chunk.get("id")
        chunk["id"] = self._id
        if not chunk.get("choices"):
            self._usages[index] = chunk.get("usage")
            self._usage_chunk = chunk
            return b""
        for choice in chunk["choices"]:
            choice["index"] = index * self.choices + choice.get("index", 0)
        return b"data: " + dumps(chunk) + b"\n\n"

    def _usage(self) -> bytes:
        if not self.include_usage or self._usage_chunk is None:
            return b""
        return b"data: " + dumps({**self._usage_chunk, "usage": sum_usage(self._usages)}) + b"\n\n"

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for first in self._firsts:
            first.cancel()


async def _never() -> dict:
    await asyncio.Event().wait()
    return {}


def _stream_error(event: bytes) -> UpstreamError:
    """A part's error event (errors.sse_event) as the error that ends the merged stream."""
    first = split_events(event)[0] if event else b""
    data = event_data(first) or b"{}"
    try:
        message = str(load_json(data, "gateway")["error"]["message"])
    except (GatewayError, KeyError, TypeError):
        message = "a prompt's stream failed"
    return UpstreamError(message)


def sum_usage(usages: list[dict | None]) -> dict | None:
    """The parts' usage added up, in the first one's shape (cached tokens summed when every part
    reports them)."""
    known = [u for u in usages if isinstance(u, dict)]
    if not known or len(known) < len(usages):
        return None
    total = dict(known[0])
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        total[key] = sum(int(u.get(key) or 0) for u in known)
    cached = [d.get("cached_tokens") for u in known if isinstance(d := u.get("prompt_tokens_details"), dict)]
    if len(cached) == len(known):
        total["prompt_tokens_details"] = {
            **total["prompt_tokens_details"],
            "cached_tokens": sum(int(c or 0) for c in cached),
        }
    return total


def refusal_of(status: int, body: bytes) -> GatewayError:
    """A part's error answer as the request's."""
    try:
        error = json.loads(body)["error"]
        return GatewayError(status, str(error.get("message")), error.get("code"), param=error.get("param"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return GatewayError(status, body[:500].decode(errors="replace"))
