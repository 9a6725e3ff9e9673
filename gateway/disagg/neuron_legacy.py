"""The "immediate first token" protocol (NeuronConnector, Neuron's vLLM 0.7.2 fork).

P and D get the request at once, with the same X-Request-Id. P produces one token, which
goes to the client immediately; D receives the KV and that token over the connector and
re-emits the token as its own first output, which is dropped here. Non-streaming, D's
answer already holds the whole completion exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine

from starlette.responses import Response

from ..context import RequestContext
from ..leg import Leg
from ..payload import dumps, load_json
from ..pool import Pool
from ..relay import StreamRelay
from ..sse import DONE, event_data, split_events
from .common import merge_usage, merged_response, prefill_body


async def _together(first: Coroutine, second: Coroutine) -> tuple:
    """Run both; if either fails, cancel the other and raise the failure."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve(ctx: RequestContext, pool: Pool) -> Response | StreamRelay:
    req = ctx.req
    p = ctx.leg(pool, "prefill")
    d = ctx.leg(pool, "decode")
    ctx.on_close(lambda: ctx.abort("the request ended"))
    p_open = p.open(req.path, dumps(prefill_body(req.body)))
    if not req.stream:
        await _together(p_open, d.open(req.path, req.raw))
        (_, p_answer), (d_raw, d_answer) = await _together(p.read(), d.read())
        return merged_response(d_raw, d_answer, p_answer.get("usage"), d.status, d.content_type, ctx.request_id)
    # D may hold its response head until the KV arrives: P's token must not wait for it.
    d_open = asyncio.ensure_future(d.open(req.path, req.raw))
    ctx.on_close(d_open.cancel)
    await p_open
    return StreamRelay(_stream(p, d, d_open, req.body.get("n") or 1), ctx)  # one prompt: PD pools refuse lists


async def _stream(p: Leg, d: Leg, d_open: asyncio.Future, choices: int) -> AsyncIterator[bytes]:
    first = _PrefillChunks()
    async for run in p.events():
        out = b"".join(first.rewrite(e) for e in split_events(run))
        if out:
            yield out
    await d_open
    dedup = _DecodeChunks(first.chunk_id, first.usage, choices)
    async for run in d.events():
        yield run if dedup.passthrough else b"".join(dedup.rewrite(e) for e in split_events(run))


class _PrefillChunks:
    """P's stream minus its finish, usage and [DONE]: the client's first token(s)."""

    def __init__(self) -> None:
        self.chunk_id: str | None = None
        self.usage: dict | None = None

    def rewrite(self, event: bytes) -> bytes:
        data = event_data(event)
        if data is None or data == b"[DONE]":
            return b""
        chunk = load_json(data, "prefill worker")
        if not chunk.get("choices"):
            self.usage = chunk.get("usage")
            return b""
        self.chunk_id = self.chunk_id or chunk.get("id")
        for choice in chunk["choices"]:
            choice["finish_reason"] = None
            if "stop_reason" in choice:
                choice["stop_reason"] = None
        return b"data: " + dumps(chunk) + b"\n\n"


class _DecodeChunks:
    """D's stream minus its role chunk and the first token it re-emits, per choice index."""

    def __init__(self, chunk_id: str | None, p_usage: dict | None, choices: int) -> None:
        self.chunk_id = chunk_id
        self.id_prefix = b'data: {"id":' + json.dumps(chunk_id).encode() if chunk_id else b""
        self.p_usage = p_usage
        self.choices = choices
        self.dropped: set[int] = set()
        self.merge_usage = bool((p_usage or {}).get("prompt_tokens_details"))

    @property
    def passthrough(self) -> bool:
        return len(self.dropped) >= self.choices and not self.merge_usage and bool(self.id_prefix)

    def rewrite(self, event: bytes) -> bytes:
        data = event_data(event)
        if data is None:
            return b""
        if data == b"[DONE]":
            return DONE
        if len(self.dropped) >= self.choices and event.startswith(self.id_prefix) and b'"choices":[]' not in data:
            return event + b"\n\n"
        chunk = load_json(data, "decode worker")
        if self.chunk_id:
            chunk["id"] = self.chunk_id  # top-level only; nested ids (tool calls) stay as sent
        if not chunk.get("choices"):
            chunk["usage"] = merge_usage(chunk.get("usage"), self.p_usage)
        else:
            chunk["choices"] = [c for c in chunk["choices"] if self._keep(c)]
            if not chunk["choices"]:
                return b""
        return b"data: " + dumps(chunk) + b"\n\n"

    def _keep(self, choice: dict) -> bool:
        index = choice.get("index", 0)
        delta = choice.get("delta")
        if isinstance(delta, dict):  # chat
            delta.pop("role", None)  # P's role chunk already reached the client
            if index not in self.dropped and delta.get("content"):
                del delta["content"]
                self.dropped.add(index)
            has_news = any(v not in (None, "") for v in delta.values())
        else:
            if index not in self.dropped and choice.get("text"):
                choice["text"] = ""
                self.dropped.add(index)
            has_news = bool(choice.get("text"))
        return has_news or choice.get("finish_reason") is not None
