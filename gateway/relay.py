"""The streaming response path and client-disconnect detection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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


class StreamRelay(Response):
    """An ASGI response that sends each run of SSE events as soon as it exists.

    The status line waits for the first event, so a worker that fails before producing
    anything still gets the client a real error status; later failures end the stream
    with an error event and [DONE].
    """

    status_code = 200
    background = None

    def __init__(
        self,
        events: AsyncIterator[bytes],
        request_id: str,
        on_disconnect: Callable[[], None],
        on_close: Callable[[], None],
    ) -> None:
        self.events = events
        self.request_id = request_id
        self.raw_headers = [*SSE_HEADERS, (b"x-request-id", request_id.encode())]
        self.on_disconnect = on_disconnect
        self.closers = [on_close]
        self.watch: ClientWatch | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch or ClientWatch(receive)
        watch.callback = self.on_disconnect
        started = False
        try:
            if watch.disconnected:
                return
            try:
                first = await anext(aiter(self.events), b"")
            except UpstreamError as err:  # nothing reached the client yet: answer with a real status
                await err.to_response(self.request_id)(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            started = True
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for run in self.events:
                if watch.disconnected:
                    break
                await send({"type": "http.response.body", "body": run, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except UpstreamError as err:
            await send({"type": "http.response.body", "body": error_event(err.to_dict()), "more_body": False})
        except asyncio.CancelledError:
            # The server is shutting down past its drain deadline: end the stream properly.
            if started and not watch.disconnected:
                error = error_dict("the gateway is shutting down; the stream was cut short", 503, "shutting_down")
                await send({"type": "http.response.body", "body": error_event(error), "more_body": False})
            raise
        finally:
            watch.close()
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            for close in self.closers:
                close()
