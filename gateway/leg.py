"""A leg: a request's call to one role of a pool (a replica, a prefill, a decode).

At any time a leg is one attempt on one endpoint, whose lease it holds; `retry.send` picks the
endpoints and decides when another attempt follows. The leg reads the answer whole (`read`)
or pushes its stream of SSE events to a consumer from the socket callback (`stream`).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from . import retry
from .errors import Retryable, UpstreamError, UpstreamTimeout
from .http1 import Response
from .payload import load_json
from .pool import Endpoint, Pool, Role
from .relay import OnEnd, OnRun, StreamRelay
from .routes import SPECS
from .sse import DONE, EventFramer, EventTooLarge
from .telemetry import usage_of
from .watchdog import Watched

if TYPE_CHECKING:
    from .context import RequestContext

# The last event of a stream of named events (/v1/responses), which has no [DONE].
_LAST_NAMED = re.compile(rb"(^|\n)event: (response\.(completed|incomplete|failed)|error)\n")
_QUEUED_RUNS = 64  # runs an async consumer may fall behind before the worker is held back


class Lease:
    """An endpoint taken for one attempt: counted in its load until given back, once."""

    __slots__ = ("ep", "tokens", "_on_free")

    def __init__(self, ep: Endpoint, tokens: int, on_free: Callable[[], None]) -> None:
        self.ep, self.tokens, self._on_free = ep, tokens, on_free
        ep.acquire(tokens)

    def give_back(self) -> None:
        if self._on_free is not None:
            self.ep.release(self.tokens)
            self._on_free()
            self._on_free = None  # type: ignore[assignment]


class Leg:
    def __init__(self, ctx: RequestContext, pool: Pool, role: Role, replayable: bool = False) -> None:
        """`replayable`: the request may go to another worker as it is when a stream fails
        before its first event (a replica's, not a decode leg's that depends on its prefill)."""
        self.ctx = ctx
        self.gateway = ctx.gateway
        self.pool = pool
        self.role = role
        self.replayable = replayable
        self.tokens = ctx.req.prompt_tokens if role == "prefill" else 0
        self.lease: Lease | None = None
        self.resp: Response | None = None
        self.watched: Watched | None = None
        self.aborted: str | None = None
        self.tried: set[Endpoint] = set()
        self.request = ("", b"")
        self.garbage: str | None = None
        self.oversized = False  # garbage that is no fault of the worker's: an event too large to relay
        self.last = b""  # the last run of events read
        self._prev = b""  # the run before it: a stream's usage may sit there, before a lone [DONE]
        self.trace = ctx.trace
        self.named_events = SPECS[ctx.route].named_events  # `event:` lines allowed, no [DONE]
        self._consumer: tuple[OnRun, OnEnd] | None = None
        self._on_sent: Callable[[], None] | None = None
        self._replay: asyncio.Task | None = None

    @property
    def ep(self) -> Endpoint | None:
        return self.lease.ep if self.lease is not None else None

    async def open(self, path: str, body: bytes, on_sent: Callable[[], None] | None = None) -> None:
        """Send the request; other workers are tried while none has produced anything.

        `on_sent` runs once the request is first on the wire: work that need not delay it
        (arming a relay, say) goes there."""
        self._on_sent = on_sent
        self.request = (path, body)
        await retry.send(self)

    async def open_relay(
        self, path: str, body: bytes, transform: Callable[[bytes], bytes] | None = None
    ) -> StreamRelay:
        """Open the leg and relay its stream to the client. The relay is armed once the request
        is on its way, so the first event goes out as soon as it is read."""
        made: list[StreamRelay] = []
        await self.open(path, body, on_sent=lambda: made.append(StreamRelay(self, self.ctx, transform)))
        return made[0]

    # One attempt ----------------------------------------------------------------

    async def attempt(self, ep: Endpoint) -> None:
        """Send the request to `ep` and wait for its answer's head (a non-2xx raises)."""
        self.lease = Lease(ep, self.tokens, self.gateway.capacity.freed)
        # W3C trace context: this attempt's own span as parent (tracing on), else the client's as it came
        traced = self.trace.leg_sent(self.role, ep.url) if self.trace is not None else b""
        url = ep.url + self.request[0]
        upstream = self.gateway.upstream
        headers = self.gateway.worker_headers(self.pool, self.ctx.request_id, self.ctx.req.content_type)
        headers += traced or self.ctx.propagate
        try:
            await upstream.answer(await upstream.post(url, self.request[1], headers, self._sent))
        except Retryable:
            if self.watched is not None and self.watched.reason:
                limit = self.ctx.deadline.first_byte_s
                raise UpstreamTimeout(f"worker {url} sent no response within {limit:g}s") from None
            raise

    def _sent(self, resp: Response) -> None:
        """The request is written (again, after a stale keep-alive connection)."""
        self.resp = resp
        if self.watched is None:
            # One watchdog entry bounds the whole call: the answer, the first event, the gaps.
            d = self.ctx.deadline
            self.watched = self.gateway.watchdog.watch(d.first_byte_s, d.total_at, self._close)
        if self._consumer is not None:
            self._push(resp, *self._consumer)
        if self._on_sent is not None:
            on_sent, self._on_sent = self._on_sent, None
            on_sent()

    def give_up(self) -> None:
        """End the current attempt: its connection closed, its endpoint given back."""
        self._unwatch()
        self._close()
        self.resp = None
        if self.lease is not None:
            self.lease.give_back()
            self.lease = None

    def _close(self) -> None:
        if self.resp is not None:
            self.resp.close()

    # The answer -----------------------------------------------------------------

    @property
    def status(self) -> int:
        assert self.resp is not None
        return self.resp.status

    @property
    def content_type(self) -> str:
        assert self.resp is not None
        return self.resp.headers.get("content-type", "application/json")

    async def read(self, expect_json: bool = True) -> tuple[bytes, dict]:
        """The whole (non-streaming) JSON body, raw and parsed; releases the endpoint.
        `expect_json=False`: a body of the answer's own content type (text, subtitles), as it is."""
        assert self.resp is not None
        self._unwatch()  # the body has a timer of its own
        raw = None
        try:
            raw = await self.gateway.upstream.read(self.resp)
            json_body = expect_json or self.content_type.startswith("application/json")
            answer = load_json(raw, f"{self.role} worker {self.where}") if json_body else {}
        except UpstreamError as err:
            self._failed(err.message, err.kind if raw is None else "invalid")
            raise
        finally:
            self.release()
        self._succeeded()
        if self.trace is not None:
            self.trace.leg_done(self.role, 0, answer.get("usage"))
        return raw, answer

    def stream(self, on_run: OnRun, on_end: OnEnd) -> None:
        """Push runs of complete SSE events to `on_run` from the socket callback, then call
        `on_end` (None: the stream ended with [DONE]). `on_run` may return a future to hold
        the worker back until it is done.

        Called before `open` returns, the runs start as soon as a 2xx answer's body arrives;
        a failed attempt pushes nothing."""
        self._consumer = (on_run, on_end)
        if self.resp is not None:
            self._push(self.resp, on_run, on_end)

    def _push(self, resp: Response, on_run: OnRun, on_end: OnEnd) -> None:
        w = self.watched
        assert w is not None
        framer = EventFramer(self.gateway.config.limits.max_event_bytes)
        between = self.ctx.deadline.between_chunks_s

        def on_data(data: bytes) -> asyncio.Future | None:
            if self.garbage:
                return None
            try:
                run = framer.feed(data)
            except EventTooLarge as err:
                self.garbage, self.oversized = f"sent {err}", True
                resp.close()
                return None
            if not run:
                if self.last:  # before the first whole event, bytes are no progress: first_byte_s holds
                    w.progress += 1
                return None
            w.progress += 1
            if not run.startswith(b"data:") and not (self.named_events and run.startswith(b"event:")):
                self.garbage = f"sent something that is not an SSE data event: {run[:80]!r}"
                resp.close()
                return None
            w.stall_s = between
            if not self.last and self.trace is not None:
                self.trace.first_run(self.role)
            self._prev, self.last = self.last, run
            wait = on_run(run)
            if wait is not None and not wait.done():
                _held_by_consumer(w, wait, between)
            return wait

        def ended(exc: Exception | None) -> None:
            outcome = self._outcome(exc)
            if outcome is not None and retry.may_replay(self):
                self._replay = asyncio.ensure_future(retry.replay(self, outcome, on_end))
            else:
                on_end(outcome)

        resp.stream(on_data, ended)

    def _outcome(self, exc: Exception | None) -> UpstreamError | None:
        kind = "broken_stream"
        if self.oversized:  # what was asked for does not fit: not the worker's fault
            return UpstreamError(f"{self.role} worker {self.where} {self.garbage}", 502, "event_too_large")
        if self.garbage:
            reason, kind = self.garbage, "invalid"
        elif exc is not None:
            reason = f"broke off the stream: {exc}"
        elif self.timed_out or self.aborted or not self._ended_whole():
            reason = "the worker ended the stream before [DONE]"
            if self.timed_out:
                kind = "timeout"
        else:
            self._succeeded()
            if self.trace is not None:
                events = self.watched.progress if self.watched is not None else 0
                self.trace.leg_done(self.role, events, usage_of(self._prev, self.last))
            return None
        self._failed(reason, kind)
        return self.failure(reason)

    async def events(self) -> AsyncIterator[bytes]:
        """The same runs as an async iterator (for protocols that combine legs)."""
        queue = _RunQueue()
        self.stream(queue.put, queue.end)
        while (run := await queue.get()) is not None:
            yield run

    # Outcomes ---------------------------------------------------------------------

    def _ended_whole(self) -> bool:
        """The stream's own last event came: [DONE], or a response's final event."""
        if self.named_events:
            return _LAST_NAMED.search(self.last) is not None
        return self.last.endswith(DONE)

    @property
    def timed_out(self) -> bool:
        return self.watched is not None and self.watched.reason is not None

    def _succeeded(self) -> None:
        if self.ep is not None:
            self.gateway.outlier.succeeded(self.ep)

    def _failed(self, reason: str, kind: str) -> None:
        if self.ep is not None and self.aborted is None:  # a client going away is not the worker's fault
            self.gateway.outlier.failed(self.ep, reason, kind)

    def failure(self, message: str) -> UpstreamError:
        w = self.watched
        if w is not None and w.reason:
            return UpstreamTimeout(f"{self.role} worker {self.where}: {w.reason}")
        if self.aborted:
            return UpstreamError(f"{self.role} leg aborted: {self.aborted}", 502, "aborted")
        return UpstreamError(f"{self.role} worker {self.where}: {message}")

    @property
    def where(self) -> str:
        return self.ep.url if self.ep else "?"

    def abort(self, reason: str) -> None:
        """Close the upstream connection: the worker sees the request cancelled."""
        if self.aborted is None:
            self.aborted = reason
            if self.resp is not None:
                self.resp.close()

    def _unwatch(self) -> None:
        if self.watched is not None:
            self.gateway.watchdog.forget(self.watched)
            self.watched = None

    def release(self) -> None:
        """Done with the leg: its endpoint and connection are given back (idempotent)."""
        if self._replay is not None:
            self._replay.cancel()
        self._unwatch()
        if self.lease is not None:
            self.lease.give_back()
        if self.resp is not None:
            self.resp.release()


def _held_by_consumer(w: Watched, wait: asyncio.Future, between_s: float) -> None:
    """The consumer (the client, in the end) is slower than the worker: while it catches up,
    the worker's silence is not the worker's (the relay bounds that wait)."""
    w.stall_s = math.inf

    def caught_up(_: asyncio.Future) -> None:
        w.stall_s = between_s
        w.progress += 1

    wait.add_done_callback(caught_up)


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
