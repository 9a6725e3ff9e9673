"""The streamed response: each run of SSE events goes to the client as soon as it exists.

A client slower than its worker makes the relay wait (the worker is held back meanwhile); one
that does not drain a write within `timeouts.client_write_s`, or by the request's total
deadline, is dropped: the stream ends as `client_timeout`, its legs are cancelled and nothing
counts against the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol

from starlette.types import Receive, Scope, Send

from .errors import ClientStalled, GatewayError, UpstreamError, render, sse_event

if TYPE_CHECKING:
    from .context import RequestContext

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
OnRun = Callable[[bytes], "asyncio.Future | None"]
OnEnd = Callable[[UpstreamError | None], None]


class PushSource(Protocol):
    """Something that pushes runs of SSE events from its socket callback (a Leg)."""

    def stream(self, on_run: OnRun, on_end: OnEnd) -> None: ...


class StreamRelay:
    """A streamed answer, called like an ASGI response once the request's legs are open.

    The source is a Leg, whose runs are written from the socket callback that read them (no
    task switch per chunk), or an async iterator of runs (protocols that combine legs). The
    status line waits for the first event, so a worker that fails before producing anything
    still gets the client a real error status; later failures end the stream with an error
    event and [DONE].
    """

    def __init__(
        self,
        source: PushSource | AsyncIterator[bytes],
        ctx: RequestContext,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.ctx = ctx
        self.transform = transform
        self.headers = [*SSE_HEADERS, (b"x-request-id", ctx.request_id.encode())]
        # How it ended, for telemetry: the status the client got, and the outcome.
        self.status, self.outcome = 200, "success"
        # A push source starts writing as soon as its first run is read, before this is called.
        self._relay = _Pushed(self, source) if hasattr(source, "stream") else _Pulled(self, source)  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self._relay
        try:
            try:
                await relay.first()
            except UpstreamError as err:  # nothing reached the client yet: answer with a real status
                self.status, self.outcome = err.status, "upstream_error"
                await render(err, self.ctx.request_id)(scope, receive, send)
                return
            await relay.rest()
            await self._finish(b"")
        except UpstreamError as err:
            self.outcome = "stream_error"
            await self._finish(sse_event(err))
        except ClientStalled:
            self.outcome = "client_timeout"
        except asyncio.CancelledError:
            # The client left (the handler sees to that), or the server is shutting down past
            # its drain deadline: then the stream ends properly.
            if self.ctx.disconnected:
                self.status, self.outcome = (200 if relay.started else 499), "client_disconnect"
            else:
                self.outcome = "shutdown"
            relay.stop()
            if relay.started and not self.ctx.disconnected:
                await self._finish(sse_event(_SHUTTING_DOWN))
            raise
        finally:
            await relay.close()

    async def _finish(self, data: bytes) -> None:
        """The stream's last write, within `timeouts.client_write_s`."""
        try:
            async with asyncio.timeout(self.ctx.deadline.client_write_s):
                await self.ctx.writer.finish(data)
        except TimeoutError:
            self.outcome = "client_timeout"
            self.ctx.drop_client("the client did not read the end of its stream")


def client_write_bound(ctx: RequestContext) -> tuple[float, str]:
    """When a write to the client that has not drained yet ends the request (loop time), and why."""
    d = ctx.deadline
    write_s = d.client_write_s
    by_write = asyncio.get_running_loop().time() + write_s
    if d.total_at < by_write:
        return d.total_at, "the request exceeded its total timeout while the client was not reading"
    return by_write, f"the client read nothing for {write_s:g}s"


_SHUTTING_DOWN = GatewayError(503, "the gateway is shutting down; the stream was cut short", "shutting_down")


class _Pulled:
    def __init__(self, relay: StreamRelay, events: AsyncIterator[bytes]) -> None:
        self.events = events
        self.ctx = relay.ctx
        self.headers = relay.headers
        self.started = False

    async def first(self) -> None:
        run = await anext(aiter(self.events), b"")
        self.ctx.writer.start(200, self.headers)
        self.started = True
        await self._write(run)

    async def rest(self) -> None:
        async for run in self.events:
            if self.ctx.disconnected:
                break
            await self._write(run)

    async def _write(self, run: bytes) -> None:
        wait = self.ctx.writer.event(run)
        if wait is not None and not wait.done():
            at, reason = client_write_bound(self.ctx)
            try:
                async with asyncio.timeout_at(at):
                    await wait
            except TimeoutError:
                self.ctx.drop_client(reason)
                raise ClientStalled(reason) from None

    def stop(self) -> None:
        pass

    async def close(self) -> None:
        aclose = getattr(self.events, "aclose", None)
        if aclose is not None:
            await aclose()


class _Pushed:
    """Runs from a Leg's socket callback, written from that callback: the first one with the
    head, so that the first token does not wait for a task to be scheduled."""

    def __init__(self, relay: StreamRelay, source: PushSource) -> None:
        self.ctx, self.transform, self.headers = relay.ctx, relay.transform, relay.headers
        self.writer = relay.ctx.writer
        self.started = self.stopped = False
        loop = asyncio.get_running_loop()
        self._first: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[UpstreamError | None] = loop.create_future()
        source.stream(self._on_run, self._on_end)

    def _on_run(self, run: bytes) -> asyncio.Future | None:
        if self.transform is not None:
            run = self.transform(run)
        if self.stopped or self.ctx.disconnected:
            return None
        try:
            if not self.started:
                self.started = True
                self.writer.start(200, self.headers)
                self._first.set_result(None)
            wait = self.writer.event(run)
        except Exception:
            self.stop()
            raise
        if wait is not None and not wait.done():
            self._bound(wait)
        return wait

    def _bound(self, wait: asyncio.Future) -> None:
        """The client is slower than the worker: it has until `client_write_bound` to drain."""
        at, reason = client_write_bound(self.ctx)
        timer = asyncio.get_running_loop().call_at(at, self._stalled, reason)
        wait.add_done_callback(lambda _: timer.cancel())

    def _stalled(self, reason: str) -> None:
        if self._done.done():
            return
        self.stopped = True
        self.ctx.drop_client(reason)
        self._done.set_exception(ClientStalled(reason))

    def _on_end(self, err: UpstreamError | None) -> None:
        if not self._first.done():
            self._first.set_exception(err or UpstreamError("the worker ended the stream before any event"))
        elif not self._done.done():
            self._done.set_result(err)

    async def first(self) -> None:
        """Waits for the first run, which is written by then."""
        await self._first

    async def rest(self) -> None:
        err = await self._done
        if err is not None:
            raise err

    def stop(self) -> None:
        self.stopped = True
        self.ctx.abort("the stream to the client ended")

    async def close(self) -> None:
        for future in (self._first, self._done):
            if future.done() and not future.cancelled():
                future.exception()  # retrieved, whether or not it was awaited
