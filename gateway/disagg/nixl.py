"""The kv_transfer_params "read mode" protocol (vLLM NixlConnector, vllm-neuron over EFA).

P gets a non-streaming one-token copy asking it to keep the KV for a remote decode; its
answer carries `kv_transfer_params`, which D receives with the original request. D then
pulls the KV and produces every output token, so its response goes to the client as-is.
"""

from __future__ import annotations

import functools

from starlette.responses import Response

from ..context import RequestContext
from ..errors import UpstreamError
from ..payload import dumps, load_json
from ..pool import Pool
from ..relay import StreamRelay
from ..sse import split_events
from .common import merge_usage, merged_response, prefill_body, with_prefill_usage


async def prefill(ctx: RequestContext, pool: Pool) -> dict:
    body = prefill_body(ctx.req.body)
    body["stream"] = False
    body.pop("stream_options", None)
    body["kv_transfer_params"] = {"do_remote_decode": True}
    leg = ctx.leg(pool, "prefill")
    await leg.open(ctx.req.path, dumps(body))
    _, answer = await leg.read()
    if not isinstance(answer.get("kv_transfer_params"), dict):
        raise UpstreamError("the prefill worker returned no kv_transfer_params; is it a kv_producer?")
    return answer


async def serve(ctx: RequestContext, pool: Pool) -> Response | StreamRelay:
    req = ctx.req
    answer = await prefill(ctx, pool)
    body = dict(req.body)
    body["kv_transfer_params"] = answer["kv_transfer_params"]
    leg = ctx.leg(pool, "decode")
    p_usage: dict = answer.get("usage") or {}
    if not req.stream:
        await leg.open(req.path, dumps(body))
        raw, result = await leg.read()
        return merged_response(raw, result, p_usage, leg.status, leg.content_type, ctx.request_id)
    transform = None
    if req.include_usage and with_prefill_usage(p_usage):
        transform = functools.partial(_with_prefill_usage, p_usage=p_usage)
    return await leg.open_relay(req.path, dumps(body), transform)


def _with_prefill_usage(run: bytes, p_usage: dict) -> bytes:
    if b'"choices":[]' in run:
        run = b"".join(_merge_event(e, p_usage) for e in split_events(run))
    return run


def _merge_event(event: bytes, p_usage: dict) -> bytes:
    if event.startswith(b"data: {") and b'"choices":[]' in event:
        chunk = load_json(event[6:], "decode worker")
        chunk["usage"] = merge_usage(chunk.get("usage"), p_usage)
        return b"data: " + dumps(chunk) + b"\n\n"
    return event + b"\n\n"
