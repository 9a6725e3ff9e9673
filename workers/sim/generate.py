"""Token emission: timer-driven SSE streams and delayed non-streaming bodies.

Streams are driven by `loop.call_at` callbacks (no task, no coroutine per token):
token k of a stream is due at t_first + k * itl, so ITL does not drift.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .api import GenRequest, SseFormat, full_response
from .httpserver import HttpConnection
from .sampling import Choices

SSE_TYPE = "text/event-stream; charset=utf-8"
ZERO_ITL_BATCH = 64  # tokens emitted per callback when itl=0, to keep the loop responsive

Outcome = Callable[[str, int], None]  # (outcome, tokens emitted): completed|cancelled|aborted


class TokenStream:
    def __init__(
        self,
        conn: HttpConnection,
        g: GenRequest,
        choices: Choices,
        itl_s: float,
        fail_after: int | None,
        on_end: Outcome,
        system_fingerprint: str,
    ) -> None:
        self._conn = conn
        self._g = g
        self._choices = choices
        self._total = max(p.count for p in choices.plans)
        self._fmt = SseFormat(g, int(time.time()), choices, system_fingerprint)
        self._itl = itl_s
        self._fail_after = fail_after
        self._on_end = on_end
        self._loop = asyncio.get_running_loop()
        self._k = 0
        self._t0 = 0.0
        self._handle: asyncio.Handle | None = None
        self._done = False

    def start(self, headers: list[tuple[str, str]]) -> None:
        """Send headers (+ chat role events) and the first token right away."""
        self._conn.on_lost = self._lost
        self._conn.start_stream(200, SSE_TYPE, headers, first=self._fmt.role_events())
        self._t0 = self._loop.time()
        self._tick()

    def _step(self, k: int) -> bytes:
        event, plans = self._fmt.token_event, self._choices.plans
        return b"".join(event(c, k) for c in range(self._g.num_choices) if k < plans[c].count)

    def _emitted(self) -> int:
        return sum(min(self._k, p.count) for p in self._choices.plans)

    def _tick(self) -> None:
        self._handle = None
        if self._done:
            return
        total, fail_after = self._total, self._fail_after
        steps = 1 if self._itl > 0 else ZERO_ITL_BATCH
        parts: list[bytes] = []
        while steps > 0 and self._k < total:
            if fail_after is not None and self._k >= fail_after:
                # Fault injection: die where token fail_after+1 would have been sent.
                self._conn.write_chunk(b"".join(parts))
                self._finish("aborted", self._conn.abort)
                return
            parts.append(self._step(self._k))
            self._k += 1
            steps -= 1
        if self._k >= total:
            parts.append(self._fmt.tail(self._emitted()))
            self._finish("completed", lambda: self._conn.end_stream(b"".join(parts)))
            return
        self._conn.write_chunk(b"".join(parts))
        if self._itl > 0:
            self._handle = self._loop.call_at(self._t0 + self._k * self._itl, self._tick)
        else:
            self._handle = self._loop.call_soon(self._tick)

    def _finish(self, outcome: str, action: Callable[[], None]) -> None:
        self._done = True
        action()
        self._on_end(outcome, self._emitted())

    def _lost(self) -> None:
        if self._done:
            return
        self._done = True
        if self._handle is not None:
            self._handle.cancel()
        self._on_end("cancelled", self._emitted())


async def respond_full(
    conn: HttpConnection,
    g: GenRequest,
    choices: Choices,
    itl_s: float,
    fail_after: int | None,
    headers: list[tuple[str, str]],
    kv_params: dict[str, Any] | None,
    on_end: Outcome,
    system_fingerprint: str,
) -> None:
    """Non-streaming: wait for the decode time of the remaining tokens, then send one body."""
    tokens = max(p.count for p in choices.plans)
    if fail_after is not None and fail_after < tokens:
        await asyncio.sleep(fail_after * itl_s)
        conn.abort()
        on_end("aborted", fail_after * g.num_choices)
        return
    if tokens > 1 and itl_s > 0:
        await asyncio.sleep((tokens - 1) * itl_s)
    body = full_response(g, int(time.time()), choices, kv_params, system_fingerprint)
    conn.send_json(200, body, headers)
    on_end("completed", sum(p.count for p in choices.plans))
