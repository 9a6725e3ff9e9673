"""Token emission: timer-driven SSE streams and delayed non-streaming bodies.

Streams are driven by `loop.call_at` callbacks (no task, no coroutine per token):
token k of a stream is due at t_first + k * itl, so ITL does not drift.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from .api import GenRequest, SseFormat, full_response
from .engine import VOCAB, VOCAB_JSON, choice_seed, token_id
from .httpserver import HttpConnection

SSE_TYPE = "text/event-stream; charset=utf-8"
ZERO_ITL_BATCH = 64  # tokens emitted per callback when itl=0, to keep the loop responsive

Outcome = Callable[[str, int], None]  # (outcome, tokens emitted): completed|cancelled|aborted


class Choices:
    """Token source for every choice of a request, with optional k=0 overrides (from KV)."""

    def __init__(self, g: GenRequest, first_tokens: list[str] | None) -> None:
        self._seeds = [choice_seed(g.prompt_of(c), g.sample_index(c)) for c in range(g.num_choices)]
        self._first = first_tokens or []

    def text_json(self, choice: int, k: int) -> bytes:
        if k == 0 and choice < len(self._first):
            return json.dumps(self._first[choice]).encode()
        return VOCAB_JSON[token_id(self._seeds[choice], k)]

    def text(self, choice: int, count: int) -> str:
        parts = [" " + VOCAB[token_id(self._seeds[choice], k)] for k in range(count)]
        if count and choice < len(self._first):
            parts[0] = self._first[choice]
        return "".join(parts)


class TokenStream:
    def __init__(self, conn: HttpConnection, g: GenRequest, choices: Choices, itl_s: float,
                 fail_after: int | None, on_end: Outcome) -> None:
        self._conn = conn
        self._g = g
        self._choices = choices
        self._fmt = SseFormat(g, int(time.time()))
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

    def _step(self, k: int, last: bool) -> bytes:
        text_json, event = self._choices.text_json, self._fmt.token_event
        return b"".join(event(c, text_json(c, k), last) for c in range(self._g.num_choices))

    def _tick(self) -> None:
        self._handle = None
        if self._done:
            return
        total, fail_after = self._g.max_tokens, self._fail_after
        steps = 1 if self._itl > 0 else ZERO_ITL_BATCH
        parts: list[bytes] = []
        while steps > 0 and self._k < total:
            if fail_after is not None and self._k >= fail_after:
                # Fault injection: die where token fail_after+1 would have been sent.
                self._conn.write_chunk(b"".join(parts))
                self._finish("aborted", self._conn.abort)
                return
            parts.append(self._step(self._k, self._k + 1 == total))
            self._k += 1
            steps -= 1
        if self._k >= total:
            parts.append(self._fmt.tail(total * self._g.num_choices))
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
        self._on_end(outcome, self._k * self._g.num_choices)

    def _lost(self) -> None:
        if self._done:
            return
        self._done = True
        if self._handle is not None:
            self._handle.cancel()
        self._on_end("cancelled", self._k * self._g.num_choices)


async def respond_full(conn: HttpConnection, g: GenRequest, choices: Choices, itl_s: float,
                       fail_after: int | None, headers: list[tuple[str, str]],
                       kv_params: dict[str, Any] | None, on_end: Outcome) -> None:
    """Non-streaming: wait for the decode time of the remaining tokens, then send one body."""
    tokens = g.max_tokens
    if fail_after is not None and fail_after < tokens:
        await asyncio.sleep(fail_after * itl_s)
        conn.abort()
        on_end("aborted", fail_after * g.num_choices)
        return
    if tokens > 1 and itl_s > 0:
        await asyncio.sleep((tokens - 1) * itl_s)
    texts = [choices.text(c, tokens) for c in range(g.num_choices)]
    body = full_response(g, int(time.time()), texts, kv_params)
    conn.send_json(200, body, headers)
    on_end("completed", tokens * g.num_choices)
