"""One OpenAI request as it goes through the gateway, and everything it holds.

A `RequestContext` is made when the request's head is read and closed when its response is
over, however it ends. `close()` is the one place that gives back what the request took: its
admission slot, its legs' endpoint leases and upstream connections, the client watch, and
any clean-up a protocol registered with `on_close` (the body's count at the front door, say).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .deadline import Deadline
from .gateway import Gateway
from .leg import Leg
from .tenants import TenantState, tokens_of
from .writer import Writer

if TYPE_CHECKING:
    from starlette.types import Receive

    from .pool import Pool, Role
    from .requests import ApiRequest
    from .routes import Route


class RequestContext:
    def __init__(self, gateway: Gateway, route: Route, request_id: str, writer: Writer) -> None:
        self.gateway = gateway
        self.route = route
        self.request_id = request_id
        self.writer = writer
        self.req: ApiRequest  # set once parsed
        self.deadline: Deadline
        self.disconnected = False
        self.finished = False  # the response is complete: a disconnect now is the normal end
        self._task = asyncio.current_task()
        self._admitted = False
        self.tenant: TenantState | None = None  # whose API key it is (gateway.tenants)
        self._work = 0
        self._legs: list[Leg] = []
        self._cleanups: list[Callable[[], object]] = []
        self._watch: ClientWatch | None = None
        self.trace = gateway.telemetry.start(request_id, route)  # None when per-request telemetry is off
        self.propagate = b""  # the client's trace context for every leg, when the gateway does not trace

    def join_trace(self, headers: Mapping[bytes, bytes]) -> None:
        """Continue the client's W3C trace (or start one); see telemetry.tracing."""
        self.propagate = self.gateway.tracing.join(self.trace, headers)

    async def admit(self, body_bytes: int = 0) -> None:
        """Take an admission slot (waiting in the queue if need be); the deadline starts now.
        `body_bytes` estimates the request's prompt for its tenant's share (gateway.tenants)."""
        self._work = body_bytes // 4
        await self.gateway.admission.enter(self.tenant, self._work)
        self._admitted = True
        if self.trace is not None:
            self.trace.admitted()
        self.deadline = Deadline.start(self.gateway.config.timeouts, self.gateway.config.limits)

    def parsed(self, req: ApiRequest) -> None:
        self.req = req
        if self.trace is not None:
            self.trace.parsed(req.model, req.stream)

    def routed(self, pool: Pool) -> None:
        if self.trace is not None:
            self.trace.routed(pool.name)

    def watch_client(self, receive: Receive) -> None:
        """From now on a disconnect cancels the request at once, wherever it is."""
        self._watch = ClientWatch(receive, self._client_gone)

    def leg(self, pool: Pool, role: Role, replayable: bool = False) -> Leg:
        """A new call to one of `pool`'s `role` endpoints, released with the request."""
        leg = Leg(self, pool, role, replayable)
        self._legs.append(leg)
        return leg

    def adopt(self, leg: Leg) -> None:
        """A leg made for a part of this request (disagg.prompt_list): aborted and released with it."""
        self._legs.append(leg)

    def on_close(self, cleanup: Callable[[], object]) -> None:
        self._cleanups.append(cleanup)

    def abort(self, reason: str) -> None:
        """Cancel every upstream request of this one (the workers see them cancelled)."""
        for leg in self._legs:
            leg.abort(reason)

    def drop_client(self, reason: str) -> None:
        """The client stopped reading: every leg is cancelled and its connection dropped. The
        request then ends on its own (no disconnect cancels it), as the client's fault."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.abort(reason)
        self.writer.abort()

    def _client_gone(self) -> None:
        if self.finished:
            return
        self.disconnected = True
        self.abort("client disconnected")
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for cleanup in self._cleanups:
            cleanup()
        self._cleanups.clear()
        for leg in self._legs:
            leg.release()
        self._legs.clear()
        if self._admitted:
            self._admitted = False
            self.gateway.admission.leave(self.tenant, tokens_of(self.trace, self._work))


class ClientWatch:
    """Notices the client going away, at once, even while every worker is silent."""

    def __init__(self, receive: Receive, on_gone: Callable[[], None]) -> None:
        self._task: asyncio.Task | None = None
        # Started once the request's current step (up to the upstream write) is over: a task
        # created here would cost the first token more than it is worth that early.
        self._starting = asyncio.get_running_loop().call_soon(self._start, receive, on_gone)

    def _start(self, receive: Receive, on_gone: Callable[[], None]) -> None:
        self._task = asyncio.create_task(self._run(receive, on_gone))

    @staticmethod
    async def _run(receive: Receive, on_gone: Callable[[], None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        on_gone()

    def close(self) -> None:
        self._starting.cancel()
        if self._task is not None:
            self._task.cancel()
