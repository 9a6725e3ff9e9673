"""Mid-stream resume (a pool's `resume_attempts`, opt-in): a stream whose worker fails after
bytes reached the client goes on from another worker, under the same response id and in the
same chunk shape, instead of ending with an error event.

A `ResumableStream` stands between a leg and the relay (it is the relay's push source). It
passes the worker's runs on as `continuation.Progress` rewrites them, and when the stream ends
with a failure (a worker that died, broke the stream, stalled past `between_chunks_s` or sent
garbage; before its first event too, which a decode leg could not otherwise replay), it sends
the continuation (continuation.py) to another endpoint of the pool's serving role as a plain
request (a PD pool's decode computes the prompt and the text so far itself), at most
`resume_attempts` times, and relays that stream.
Where a resume is impossible (continuation.resumable: n > 1, logprobs, tools, echo; the client
gone; the request's total deadline spent; no continuation possible; the new worker refusing
it), the stream ends with the error event as before. Counted in
`pd_gateway_stream_resumes_total{pool,outcome}` and logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .continuation import Progress, resumable, with_token_ids
from .errors import GatewayError, UpstreamError
from .logs import safe
from .payload import dumps
from .relay import OnEnd, OnRun, StreamRelay
from .sse import DONE

if TYPE_CHECKING:
    from collections.abc import Callable

    from .context import RequestContext
    from .leg import Leg
    from .pool import Endpoint, Pool

log = logging.getLogger("pd_gateway")

__all__ = ["ResumableStream", "enabled", "open_relay"]


def enabled(ctx: RequestContext, pool: Pool) -> bool:
    """Whether this request's stream is resumable on this pool."""
    return pool.config.resume_attempts > 0 and resumable(ctx.req)


async def open_relay(
    ctx: RequestContext, pool: Pool, leg: Leg, body: dict, transform: Callable[[bytes], bytes] | None = None
) -> StreamRelay:
    """`Leg.open_relay`, with the stream resumable: the worker is asked for token ids too."""
    made: list[StreamRelay] = []
    source = ResumableStream(ctx, pool, leg, body)
    arm = lambda: made.append(StreamRelay(source, ctx, transform))  # noqa: E731
    await leg.open(ctx.req.path, dumps(with_token_ids(body)), on_sent=arm)
    return made[0]


class ResumableStream:
    """A leg's stream, continued on another endpoint when it fails mid-way (see the module)."""

    def __init__(self, ctx: RequestContext, pool: Pool, leg: Leg, body: dict) -> None:
        self.ctx, self.pool, self.leg, self.body = ctx, pool, leg, body
        self.role = leg.role
        self.left = pool.config.resume_attempts
        self.progress = Progress(ctx.req.route == "chat", bool(body.get("return_token_ids")))
        self.failed: set[Endpoint] = set()
        self._on_run: OnRun | None = None
        self._on_end: OnEnd | None = None
        self._sent = False  # something reached the relay (and so the client)
        self._task: asyncio.Task | None = None

    def stream(self, on_run: OnRun, on_end: OnEnd) -> None:
        self._on_run, self._on_end = on_run, on_end
        self.leg.stream(self._run, self._end)

    def _run(self, run: bytes) -> asyncio.Future | None:
        assert self._on_run is not None
        out = self.progress.rewrite(run)
        if not out:
            return None
        self._sent = True
        return self._on_run(out)

    def _end(self, err: UpstreamError | None) -> None:
        assert self._on_end is not None
        if err is None or self.ctx.disconnected or self.leg.aborted:
            self._on_end(err)
            return
        if self.left <= 0 or self.ctx.deadline.remaining_s() <= 0:
            self._give_up(err, "no resume attempt left" if self.left <= 0 else "the request's deadline is spent")
            return
        self.left -= 1
        self._task = asyncio.ensure_future(self._resume(err))
        self.ctx.on_close(self._task.cancel)

    async def _resume(self, err: UpstreamError) -> None:
        assert self._on_run is not None and self._on_end is not None
        old = self.leg
        if old.ep is not None:
            self.failed.add(old.ep)
        old.release()
        body = None if self.progress.finished else self.progress.continuation(self.body)
        if body is None:
            if self.progress.finished or self.progress.generated:  # nothing left to generate
                self.ctx.gateway.telemetry.resume(self.pool.name, "resumed")
                self._on_run(DONE)
                self._on_end(None)
            else:
                self._give_up(err, "its request cannot be continued")
            return
        leg = self.ctx.leg(self.pool, self.role, replayable=True)
        leg.tried |= self.failed
        try:
            await leg.open(self.ctx.req.path, dumps(body))
        except GatewayError as again:
            self._give_up(err, f"the resumed request failed: {again.message}")
            return
        self.progress.started_again()
        self.leg = leg
        self.ctx.gateway.telemetry.resume(self.pool.name, "resumed")
        log.warning(
            "rid=%s %s; resumed on %s after %d tokens",
            self.ctx.request_id,
            safe(err.message),
            leg.where,
            self.progress.generated,
        )
        leg.stream(self._run, self._end)

    def _give_up(self, err: UpstreamError, why: str) -> None:
        assert self._on_end is not None
        self.ctx.gateway.telemetry.resume(self.pool.name, "gave_up")
        log.warning("rid=%s %s; not resumed: %s", self.ctx.request_id, safe(err.message), why)
        self._on_end(err)
