"""A list of prompts sent to a PD pool: each prompt is a P->D request of its own, run at once,
and their answers are merged in order as one vLLM server answers a list.

vLLM numbers a list's choices `prompt index * n + choice index`, sums the usage and, streaming,
sends every choice's chunks under one id with one usage chunk at the end; so does the merge
here (list_stream.py for streams). Each part is served by the pool's protocol as any request
(prefill, decode, decode-local fallback, retries), under the request's own id plus `-<index>`
towards the workers (a prefill's KV lease is named after it), and its legs are the request's:
released, and aborted when the client leaves, with it. Any part's failure fails the request.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from starlette.responses import Response

from ..leg import Leg
from ..payload import dumps, load_json
from ..relay import StreamRelay
from .list_stream import MergedStream, PartWriter, sum_usage

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..pool import Pool, Role
    from ..requests import ApiRequest

Serve = Callable[["RequestContext", "Pool"], Awaitable[Response | StreamRelay]]


class Part:
    """One prompt of the list, seen by a protocol as a request context of its own; everything
    else (deadline, trace, gateway, disconnect) is the whole request's."""

    def __init__(self, ctx: RequestContext, req: ApiRequest, index: int, writer: PartWriter | None) -> None:
        self._ctx = ctx
        self.req = req
        self.index = index
        self.request_id = f"{ctx.request_id}-{index}"
        self.writer = writer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def leg(self, pool: Pool, role: Role, replayable: bool = False) -> Leg:
        leg = Leg(cast("RequestContext", self), pool, role, replayable)
        self._ctx.adopt(leg)
        return leg


def parts_of(req: ApiRequest) -> list[ApiRequest]:
    """One request per prompt of `req`'s list, in order."""
    out = []
    for prompt in req.body["prompt"]:
        body = {**req.body, "prompt": prompt}
        chars = len(prompt) if isinstance(prompt, str) else 4 * len(prompt)
        out.append(dataclasses.replace(req, raw=dumps(body), body=body, prompt_tokens=max(1, chars // 4)))
    return out


async def serve(ctx: RequestContext, pool: Pool, protocol: Serve) -> Response | StreamRelay:
    req = ctx.req
    choices = req.body.get("n") or 1
    if req.stream:
        merged = MergedStream(len(req.body["prompt"]), choices, req.include_usage)
        parts = [Part(ctx, r, i, merged.writer(i)) for i, r in enumerate(parts_of(req))]
        tasks = [
            asyncio.ensure_future(merged.run(i, protocol(cast("RequestContext", p), pool))) for i, p in enumerate(parts)
        ]
        ctx.on_close(merged.close)
        await merged.started(tasks)  # every part's first event, or the first failure raised
        return StreamRelay(merged.runs(), ctx)
    parts = [Part(ctx, r, i, None) for i, r in enumerate(parts_of(req))]
    answers = await _all([protocol(cast("RequestContext", p), pool) for p in parts])
    return _merged(answers, choices, ctx.request_id)


async def _all(coros: list[Awaitable[Response | StreamRelay]]) -> list[Response]:
    """Every part's answer; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [cast(Response, t.result()) for t in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _merged(answers: list[Response], choices: int, request_id: str) -> Response:
    """The parts' answers as one: choices re-numbered in order, usage summed."""
    bodies = [load_json(bytes(a.body), "decode worker") for a in answers]
    out = bodies[0]
    out["choices"] = [
        {**c, "index": i * choices + c.get("index", 0)}
        for i, body in enumerate(bodies)
        for c in body.get("choices", [])
    ]
    out["usage"] = sum_usage([b.get("usage") for b in bodies])
    return Response(dumps(out), 200, media_type="application/json", headers={"x-request-id": request_id})
