"""The streaming response path and client-disconnect detection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Protocol

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .errors import UpstreamError, error_dict
from .sse import error_event

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientWatch:
    """Notices the client going away, at once, even while every worker is silent.

    Until a stream starts, a disconnect cancels the request's task (aborting any leg
    in flight); once streaming, the relay installs a callback that aborts its legs.
    """

    def __init__(self, receive: Receive) -> None:
        self.disconnected = False
        owner = asyncio.current_task()
        assert owner is not None
        self.callback: Callable[[], object] = owner.cancel
        self._task = asyncio.create_task(self._run(receive))

    async def _run(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self.callback()

    def close(self) -> None:
        self._task.cancel()


_PENDING_RUNS = 64  # runs held before the head is out, at most, before the worker is held back


class PushSource(Protocol):
    """Something that pushes runs of SSE events from its socket callback (a Leg)."""

    def stream(self, on_run: Callable[[bytes], asyncio.Future | None],
               on_end: Callable[[UpstreamError | None], None]) -> None: ...


def send_now(send: Send, message: Message) -> asyncio.Future | None:
    """Run `send(message)` here and now, outside any task.

    uvicorn's send only waits when the client's buffer is full; then the rest of it runs in
    a task, and the returned future tells the caller to hold the worker back until it is done.
    """
    coro = send(message)
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coro, waiting))


async def _finish(coro: Coroutine, waiting: object) -> None:
    while True:
        try:
            if isinstance(waiting, asyncio.Future):
                waiting._asyncio_future_blocking = False  # what a task does with a future it was handed
                await waiting
            else:
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            coro.close()
            raise
        except BaseException:
            pass  # the coroutine sees the outcome itself when it resumes
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


class StreamRelay(Response):
    """An ASGI response that sends each run of SSE events as soon as it exists.

    The source is a Leg, whose runs are sent from the socket callback that read them (the
    fast path: no task switch per chunk), or an async iterator of runs (protocols that
    combine legs). The status line waits for the first event, so a worker that fails
    before producing anything still gets the client a real error status; later failures
    end the stream with an error event and [DONE].
    """

    status_code = 200
    background = None

    def __init__(
        self,
        source: PushSource | AsyncIterator[bytes],
        request_id: str,
        on_disconnect: Callable[[], None],
        on_close: Callable[[], None],
        transform: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.source = source
        self.transform = transform
        self.request_id = request_id
        self.raw_headers = [*SSE_HEADERS, (b"x-request-id", request_id.encode())]
        self.on_disconnect = on_disconnect
        self.closers = [on_close]
        self.watch: ClientWatch | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch or ClientWatch(receive)
        watch.callback = self.on_disconnect
        relay = _Pushed(self, watch, send) if hasattr(self.source, "stream") else _Pulled(self, watch, send)
        try:
            if watch.disconnected:
                return
            try:
                first = await relay.first()
            except UpstreamError as err:  # nothing reached the client yet: answer with a real status
                await err.to_response(self.request_id)(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            relay.started = True
            await send({"type": "http.response.body", "body": first, "more_body": True})
            await relay.rest()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except UpstreamError as err:
            await send({"type": "http.response.body", "body": error_event(err.to_dict()), "more_body": False})
        except asyncio.CancelledError:
            # The server is shutting down past its drain deadline: end the stream properly.
            relay.stop()
            if relay.started and not watch.disconnected:
                error = error_dict("the gateway is shutting down; the stream was cut short", 503, "shutting_down")
                await send({"type": "http.response.body", "body": error_event(error), "more_body": False})
            raise
        finally:
            watch.close()
            await relay.close()
            for close in self.closers:
                close()


class _Pulled:
    def __init__(self, relay: StreamRelay, watch: ClientWatch, send: Send) -> None:
        self.events: AsyncIterator[bytes] = relay.source  # type: ignore[assignment]
        self.watch, self.send = watch, send
        self.started = False

    async def first(self) -> bytes:
        return await anext(aiter(self.events), b"")

    async def rest(self) -> None:
        async for run in self.events:
            if self.watch.disconnected:
                break
            await self.send({"type": "http.response.body", "body": run, "more_body": True})

    def stop(self) -> None:
        pass

    async def close(self) -> None:
        aclose = getattr(self.events, "aclose", None)
        if aclose is not None:
            await aclose()


class _Pushed:
    """Runs from a Leg's socket callback: held in `_pending` until the head is out, then sent
    from the callback itself."""

    def __init__(self, relay: StreamRelay, watch: ClientWatch, send: Send) -> None:
        self.watch, self.send, self.transform = watch, send, relay.transform
        self.abort = relay.on_disconnect
        self.started = self.stopped = False
        loop = asyncio.get_running_loop()
        self._pending: list[bytes] | None = []
        self._room: asyncio.Future[None] | None = None  # the worker waits while too much is pending
        self._first: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[UpstreamError | None] = loop.create_future()
        relay.source.stream(self._on_run, self._on_end)  # type: ignore[union-attr]

    def _on_run(self, run: bytes) -> asyncio.Future | None:
        if self.transform is not None:
            run = self.transform(run)
        if self._pending is not None:
            self._pending.append(run)
            if not self._first.done():
                self._first.set_result(None)
            if len(self._pending) >= _PENDING_RUNS:
                self._room = asyncio.get_running_loop().create_future()
                return self._room
            return None
        if self.stopped or self.watch.disconnected:
            return None
        try:
            return send_now(self.send, {"type": "http.response.body", "body": run, "more_body": True})
        except Exception:
            self.stopped = True
            self.abort()
            raise

    def _on_end(self, err: UpstreamError | None) -> None:
        if not self._first.done():
            self._first.set_exception(err or UpstreamError("the worker ended the stream before any event"))
        elif not self._done.done():
            self._done.set_result(err)

    def _take(self) -> bytes:
        assert self._pending is not None
        runs, self._pending = self._pending, []
        if self._room is not None:
            self._room.set_result(None)
            self._room = None
        return b"".join(runs)

    async def first(self) -> bytes:
        await self._first
        return self._take()

    async def rest(self) -> None:
        while self._pending:  # what arrived while the head and the first runs were being sent
            await self.send({"type": "http.response.body", "body": self._take(), "more_body": True})
        self._pending = None  # from here on, the socket callback sends
        err = await self._done
        if err is not None:
            raise err

    def stop(self) -> None:
        self.stopped = True
        self.abort()

    async def close(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        if self._first.done() and not self._first.cancelled():
            self._first.exception()  # retrieved, whether or not first() was awaited
