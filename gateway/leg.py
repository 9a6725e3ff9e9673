"""One upstream call ("leg"): endpoint choice with retries, the response, and its accounting."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

from starlette.types import Send

from .errors import GatewayError, UpstreamError, UpstreamStatus
from .http1 import Response
from .limits import overloaded
from .payload import load_json
from .pool import Endpoint, Pool, Role
from .relay import StreamRelay
from .requests import ApiRequest
from .router import Router, Saturated
from .sse import DONE, EventFramer
from .telemetry import usage_of
from .upstream import ConnectFailed, NoAnswer, Retryable
from .watchdog import Watched

log = logging.getLogger("pd_gateway")

OnRun = Callable[[bytes], "asyncio.Future | None"]
_QUEUED_RUNS = 64  # runs an async consumer may fall behind before the worker is held back


class Leg:
    def __init__(self, router: Router, pool: Pool, role: Role, req: ApiRequest, request_id: str,
                 replayable: bool = False) -> None:
        """`replayable`: the request may go to another worker as it is when a stream fails
        before its first event (a replica's, not a decode leg's that depends on its prefill)."""
        self.router = router
        self.replayable = replayable
        self.pool = pool
        self.role = role
        self.request_id = request_id
        self.req = req
        self.trace = req.trace
        self.tokens = req.prompt_tokens if role == "prefill" else 0
        self.ep: Endpoint | None = None
        self.resp: Response | None = None
        self.watched: Watched | None = None
        self.aborted: str | None = None
        self._held = False
        self._garbage: str | None = None
        self._last = b""
        self._prev = b""  # the run before _last: a stream's usage may sit there, before a lone [DONE]
        self._consumer: tuple[OnRun, Callable[[UpstreamError | None], None]] | None = None
        self._on_sent: Callable[[], None] | None = None
        self._request = ("", b"")
        self._tried: set[Endpoint] = set()
        self._replay: asyncio.Task | None = None

    @property
    def headers(self) -> bytes:
        return self.router.worker_headers(self.pool, self.request_id)

    async def open(self, path: str, body: bytes, on_sent: Callable[[], None] | None = None) -> None:
        """Send the request; retry other workers while none has produced anything.

        `on_sent` runs once the request is first on the wire: work that need not delay it
        (arming a relay with `stream`, say) goes there."""
        self._on_sent = on_sent
        self._request = (path, body)
        await self._choose_and_send()

    async def _choose_and_send(self) -> None:
        router = self.router
        path, body = self._request
        tried = self._tried
        loop = asyncio.get_running_loop()
        deadline = loop.time() + router.config.limits.queue_timeout_s
        retries = router.config.retries.attempts
        while True:
            if self.aborted:
                raise self._failure(self.aborted)
            try:
                ep = router.choose(self.pool, self.role, self.req, exclude=tried)
            except Saturated:
                await self._wait_for_capacity(deadline - loop.time())
                continue
            ep.acquire(self.tokens)
            if self.trace is not None:
                self.trace.leg_sent(self.role, ep.url)
            try:
                await self._attempt(ep.url + path, body)
            except (Retryable, UpstreamStatus) as err:
                self._given_up(ep)
                if isinstance(err, UpstreamStatus) and err.status < 500:
                    raise
                router.failed(ep, str(err), eject_now=isinstance(err, ConnectFailed), kind=_kind(err))
                tried.add(ep)
                if len(tried) > retries or self.aborted:
                    raise
                router.telemetry.retried(self.trace, self.pool.name, self.role)
                log.warning("rid=%s %s; retrying on another worker", self.request_id, err)
                continue
            except UpstreamError as err:  # a timeout: the prompt may simply be long, so no retry
                self._given_up(ep)
                router.failed(ep, err.message, kind=_kind(err))
                raise
            except BaseException:
                self._given_up(ep)
                raise
            self.ep, self._held = ep, True
            return

    async def _attempt(self, url: str, body: bytes) -> None:
        upstream = self.router.upstream
        try:
            await upstream.answer(await upstream.post(url, body, self.headers, self._sent))
        except Retryable:
            if self.watched is not None and self.watched.reason:
                limit = self.router.config.timeouts.first_byte_s
                raise UpstreamError(f"worker {url} sent no response within {limit:g}s", 504, "timeout") from None
            raise

    def _sent(self, resp: Response) -> None:
        """The request is written (again, after a stale keep-alive connection)."""
        self.resp = resp
        if self.watched is None:
            # One watchdog entry bounds the whole call: the answer, the first event, the gaps.
            t = self.router.config.timeouts
            self.watched = self.router.watchdog.watch(t.first_byte_s, t.total_s, self._close)
        if self._consumer is not None:
            self._push(resp, *self._consumer)
        if self._on_sent is not None:
            on_sent, self._on_sent = self._on_sent, None
            on_sent()

    def _close(self) -> None:
        if self.resp is not None:
            self.resp.close()

    def _given_up(self, ep: Endpoint) -> None:
        self._unwatch()
        self._close()
        self.resp = None
        self._drop(ep)

    async def _wait_for_capacity(self, remaining: float) -> None:
        try:
            if remaining <= 0:
                raise TimeoutError
            await self.router.capacity.wait(remaining)
        except TimeoutError:
            limit = self.router.config.limits.max_inflight_per_worker
            busy = f"every {self.role} worker of pool '{self.pool.name}' has {limit} requests in flight"
            raise overloaded(busy) from None

    def _drop(self, ep: Endpoint) -> None:
        ep.release(self.tokens)
        self.router.capacity.freed()

    @property
    def status(self) -> int:
        assert self.resp is not None
        return self.resp.status

    @property
    def content_type(self) -> str:
        assert self.resp is not None
        return self.resp.headers.get("content-type", "application/json")

    async def read(self) -> tuple[bytes, dict]:
        """The whole (non-streaming) JSON body, raw and parsed; releases the endpoint."""
        assert self.resp is not None
        self._unwatch()  # the body has a timer of its own
        kind = "broken_stream"
        try:
            raw = await self.router.upstream.read(self.resp)
            kind = "invalid"
            answer = load_json(raw, f"{self.role} worker {self._where}")
        except UpstreamError as err:
            self._failed(err.message, "timeout" if err.code == "timeout" else kind)
            raise
        finally:
            self.release()
        self._succeeded()
        if self.trace is not None:
            self.trace.leg_done(self.role, 0, answer.get("usage"))
        return raw, answer

    async def open_relay(self, path: str, body: bytes, send: Send | None,
                         transform: Callable[[bytes], bytes] | None = None) -> StreamRelay:
        """Open the leg and relay its stream to the client. The relay is armed once the request
        is on its way, so the first event goes out as soon as it is read."""
        made: list[StreamRelay] = []

        def arm() -> None:
            made.append(StreamRelay(self, self.request_id, on_disconnect=lambda: self.abort("client disconnected"),
                                    on_close=self.release, transform=transform, send=send))

        await self.open(path, body, on_sent=arm)
        return made[0]

    def stream(self, on_run: OnRun, on_end: Callable[[UpstreamError | None], None]) -> None:
        """Push runs of complete SSE events to `on_run` from the socket callback, then call
        `on_end` (None: the stream ended with [DONE]). `on_run` may return a future to hold
        the worker back until it is done.

        Called before `open` returns, the runs start as soon as a 2xx answer's body arrives;
        a failed attempt pushes nothing."""
        self._consumer = (on_run, on_end)
        if self.resp is not None:
            self._push(self.resp, on_run, on_end)

    def _push(self, resp: Response, on_run: OnRun, on_end: Callable[[UpstreamError | None], None]) -> None:
        w = self.watched
        assert w is not None
        framer = EventFramer()
        between = self.router.config.timeouts.between_chunks_s

        def on_data(data: bytes) -> asyncio.Future | None:
            if self._garbage:
                return None
            w.progress += 1
            run = framer.feed(data)
            if not run:
                return None
            if not run.startswith(b"data:"):
                self._garbage = f"sent something that is not an SSE data event: {run[:80]!r}"
                resp.close()
                return None
            w.stall_s = between
            if not self._last and self.trace is not None:
                self.trace.first_run(self.role)
            self._prev = self._last
            self._last = run
            return on_run(run)

        def ended(exc: Exception | None) -> None:
            outcome = self._outcome(exc)
            if outcome is not None and self._may_replay():
                self._replay = asyncio.ensure_future(self._send_again(outcome, on_end))
            else:
                on_end(outcome)

        resp.stream(on_data, ended)

    def _may_replay(self) -> bool:
        """Nothing reached the consumer, the worker failed (no timeout, abort or garbage),
        and another worker may be tried."""
        timed_out = self.watched is not None and self.watched.reason
        return (self.replayable and not self._last and not timed_out and not self.aborted and not self._garbage
                and len(self._tried) < self.router.config.retries.attempts)

    async def _send_again(self, failure: UpstreamError, on_end: Callable[[UpstreamError | None], None]) -> None:
        ep = self.ep
        assert ep is not None
        log.warning("rid=%s %s before its first event; retrying on another worker", self.request_id, failure.message)
        self._tried.add(ep)
        self._given_up(ep)
        self.ep, self._held = None, False
        self.router.telemetry.replayed(self.trace, self.pool.name)
        try:
            await self._choose_and_send()  # a 2xx answer re-arms the consumer (see _sent)
        except UpstreamError as err:
            on_end(err)
        except (GatewayError, UpstreamStatus) as err:
            message = err.message if isinstance(err, GatewayError) else f"worker answered {err.status}"
            on_end(UpstreamError(f"{failure.message}; no other worker took the request: {message}"))

    def _outcome(self, exc: Exception | None) -> UpstreamError | None:
        kind = "broken_stream"
        if self._garbage:
            reason, kind = self._garbage, "invalid"
        elif exc is not None:
            reason = f"broke off the stream: {exc}"
        elif (self.watched and self.watched.reason) or self.aborted or not self._last.endswith(DONE):
            reason = "the worker ended the stream before [DONE]"
            if self.watched and self.watched.reason:
                kind = "timeout"
        else:
            self._succeeded()
            if self.trace is not None:
                events = self.watched.progress if self.watched else 0
                self.trace.leg_done(self.role, events, usage_of(self._prev, self._last))
            return None
        self._failed(reason, kind)
        return self._failure(reason)

    async def events(self) -> AsyncIterator[bytes]:
        """The same runs as an async iterator (for protocols that combine legs)."""
        queue = _RunQueue()
        self.stream(queue.put, queue.end)
        while (run := await queue.get()) is not None:
            yield run

    def _succeeded(self) -> None:
        if self.ep is not None:
            self.router.succeeded(self.ep)

    def _failed(self, reason: str, kind: str = "broken_stream") -> None:
        if self.ep is not None and self.aborted is None:  # a client going away is not the worker's fault
            self.router.failed(self.ep, reason, kind=kind)

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

    def _unwatch(self) -> None:
        if self.watched is not None:
            self.router.watchdog.forget(self.watched)
            self.watched = None

    def release(self) -> None:
        if self._replay is not None:
            self._replay.cancel()
        self._unwatch()
        if self._held and self.ep is not None:
            self._drop(self.ep)
            self._held = False
        if self.resp is not None:
            self.resp.release()


def _kind(err: Exception) -> str:
    """An upstream failure's kind, for the failure counter."""
    if isinstance(err, ConnectFailed):
        return "connect"
    if isinstance(err, UpstreamStatus):
        return "5xx"
    if isinstance(err, NoAnswer):
        return "broken_stream"
    if isinstance(err, UpstreamError) and err.code == "timeout":
        return "timeout"
    return "broken_stream"


class _RunQueue:
    """Runs pushed from a socket callback, taken by a task; the worker waits when it is far ahead."""

    def __init__(self) -> None:
        self._runs: deque[bytes] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._ended = False
        self._error: UpstreamError | None = None

    def put(self, run: bytes) -> asyncio.Future | None:
        self._runs.append(run)
        self._notify()
        if len(self._runs) >= _QUEUED_RUNS:
            self._room = asyncio.get_running_loop().create_future()
        return self._room

    def end(self, error: UpstreamError | None) -> None:
        self._ended, self._error = True, error
        self._notify()

    async def get(self) -> bytes | None:
        """The next run; None at a clean end; raises the stream's error."""
        while not self._runs and not self._ended:
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        if self._runs:
            if self._room is not None and len(self._runs) <= _QUEUED_RUNS // 2:
                self._room.set_result(None)
                self._room = None
            return self._runs.popleft()
        if self._error is not None:
            raise self._error
        return None

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
