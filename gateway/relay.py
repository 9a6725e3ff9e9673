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
        self._task: asyncio.Task | None = None
        # Started once the request's first step (up to the upstream write) is over: a task
        # created here would cost the first token more than it is worth that early.
        self._starting = asyncio.get_running_loop().call_soon(self._start, receive)

    def _start(self, receive: Receive) -> None:
        self._task = asyncio.create_task(self._run(receive))

    async def _run(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self.callback()

    def close(self) -> None:
        self._starting.cancel()
        if self._task is not None:
            self._task.cancel()


class PushSource(Protocol):
    """Something that pushes runs of SSE events from its socket callback (a Leg)."""

    def stream(self, on_run: Callable[[bytes], asyncio.Future | None],
               on_end: Callable[[UpstreamError | None], None]) -> None: ...


def send_now(send: Send, message: Message) -> asyncio.Future | None:
    """Run `send(message)` here and now, outside any task.

    uvicorn's send only waits when the client's buffer is full; then the rest of it runs in
    a task, and the returned future tells the caller to hold the worker back until it is done.
    """
    return run_now(send(message))


def run_now(coro: Coroutine) -> asyncio.Future | None:
    """Step `coro` here and now; if it has to wait, the rest runs in a task (its future is returned)."""
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
        send: Send | None = None,
    ) -> None:
        self.source = source
        self.transform = transform
        self.request_id = request_id
        self.raw_headers = [*SSE_HEADERS, (b"x-request-id", request_id.encode())]
        self.on_disconnect = on_disconnect
        self.closers = [on_close]
        self.watch: ClientWatch | None = None
        # How it ended, for telemetry (read by the closers): the status sent, and the outcome.
        self.status = 200
        self.outcome = "success"
        # Given the client's `send` before the leg opens, a push relay sends the head and the
        # first runs from the socket callback that read them, before this response is called.
        self._armed = _Pushed(self, send) if send is not None and hasattr(source, "stream") else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch or ClientWatch(receive)
        watch.callback = self.on_disconnect
        relay = self._armed or (_Pushed(self, send) if hasattr(self.source, "stream") else _Pulled(self, send))
        relay.watch = watch
        try:
            if watch.disconnected:
                return
            try:
                first = await relay.first()
            except UpstreamError as err:  # nothing reached the client yet: answer with a real status
                self.status, self.outcome = err.status, "upstream_error"
                await err.to_response(self.request_id)(scope, receive, send)
                return
            if not relay.started:
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                relay.started = True
                await send({"type": "http.response.body", "body": first, "more_body": True})
            await relay.rest()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except UpstreamError as err:
            self.outcome = "stream_error"
            await send({"type": "http.response.body", "body": error_event(err.to_dict()), "more_body": False})
        except asyncio.CancelledError:
            # The server is shutting down past its drain deadline: end the stream properly.
            self.outcome = "shutdown"
            relay.stop()
            if relay.started and not watch.disconnected:
                error = error_dict("the gateway is shutting down; the stream was cut short", 503, "shutting_down")
                await send({"type": "http.response.body", "body": error_event(error), "more_body": False})
            raise
        finally:
            if watch.disconnected:
                self.outcome, self.status = "client_disconnect", 200 if relay.started else 499
            watch.close()
            await relay.close()
            for close in self.closers:
                close()


class _Pulled:
    def __init__(self, relay: StreamRelay, send: Send) -> None:
        self.events: AsyncIterator[bytes] = relay.source  # type: ignore[assignment]
        self.send = send
        self.watch: ClientWatch | None = None
        self.started = False

    async def first(self) -> bytes:
        return await anext(aiter(self.events), b"")

    async def rest(self) -> None:
        async for run in self.events:
            if self.watch is not None and self.watch.disconnected:
                break
            await self.send({"type": "http.response.body", "body": run, "more_body": True})

    def stop(self) -> None:
        pass

    async def close(self) -> None:
        aclose = getattr(self.events, "aclose", None)
        if aclose is not None:
            await aclose()


def _body_pusher(send: Send) -> Callable[[bytes], asyncio.Future | None]:
    """The server's own per-part writer where it has one (gateway.protocol), else `send_now`."""
    push = getattr(getattr(send, "__self__", None), "push", None)
    if push is not None:
        return push
    return lambda run: send_now(send, {"type": "http.response.body", "body": run, "more_body": True})


class _Pushed:
    """Runs from a Leg's socket callback, sent from that callback: the first one with the
    head, so that the first token does not wait for a task to be scheduled."""

    def __init__(self, relay: StreamRelay, send: Send) -> None:
        self.send, self.transform = send, relay.transform
        self.push = _body_pusher(send)
        self.headers = relay.raw_headers
        self.abort = relay.on_disconnect
        self.watch: ClientWatch | None = None
        self.started = self.stopped = False
        loop = asyncio.get_running_loop()
        self._first: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[UpstreamError | None] = loop.create_future()
        relay.source.stream(self._on_run, self._on_end)  # type: ignore[union-attr]

    def _on_run(self, run: bytes) -> asyncio.Future | None:
        if self.transform is not None:
            run = self.transform(run)
        if self.stopped or (self.watch is not None and self.watch.disconnected):
            return None
        try:
            if self.started:
                return self.push(run)
            self.started = True
            self._first.set_result(None)
            return run_now(self._begin(run))
        except Exception:
            self.stopped = True
            self.abort()
            raise

    async def _begin(self, first: bytes) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await self.send({"type": "http.response.body", "body": first, "more_body": True})

    def _on_end(self, err: UpstreamError | None) -> None:
        if not self._first.done():
            self._first.set_exception(err or UpstreamError("the worker ended the stream before any event"))
        elif not self._done.done():
            self._done.set_result(err)

    async def first(self) -> bytes:
        """Waits for the first run, which is sent by then."""
        await self._first
        return b""

    async def rest(self) -> None:
        err = await self._done
        if err is not None:
            raise err

    def stop(self) -> None:
        self.stopped = True
        self.abort()

    async def close(self) -> None:
        if self._first.done() and not self._first.cancelled():
            self._first.exception()  # retrieved, whether or not first() was awaited
