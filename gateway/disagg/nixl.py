"""The kv_transfer_params "read mode" protocol (vLLM NixlConnector, vllm-neuron over EFA).

P gets a non-streaming one-token copy asking it to keep the KV for a remote decode; its
answer carries `kv_transfer_params`, which D receives with the original request. D then
pulls the KV and produces every output token, so its response goes to the client as-is.
P's kept KV is a lease the gateway gives back when no decode will read it (nixl_lease).
"""

from __future__ import annotations

import functools

from starlette.responses import Response

from .. import resume
from ..context import RequestContext
from ..errors import GatewayError
from ..leg import Leg
from ..payload import dumps, load_json
from ..pool import Pool
from ..relay import StreamRelay
from ..sse import split_events
from . import local, nixl_lease, selective
from .common import merge_usage, merged_response, prefill_body, with_prefill_usage


async def prefill(ctx: RequestContext, leg: Leg) -> dict:
    """P's answer, its kv_transfer_params checked (nixl_lease.checked)."""
    body = prefill_body(ctx.req.body)
    body["stream"] = False
    body.pop("stream_options", None)
    body["kv_transfer_params"] = {"do_remote_decode": True}
    await leg.open(ctx.req.path, dumps(body))
    where = leg.where
    _, answer = await leg.read()
    answer["kv_transfer_params"] = nixl_lease.checked(answer.get("kv_transfer_params"), where)
    return answer


async def serve(ctx: RequestContext, pool: Pool) -> Response | StreamRelay:
    if not selective.disaggregate(pool, ctx.req):
        return await local.serve(ctx, pool, local.SHORT_PROMPT)
    fallback = pool.config.decode_local_fallback
    if fallback and (reason := local.unavailable(pool, ctx.gateway.config.limits.max_inflight_per_worker)):
        return await local.serve(ctx, pool, reason)
    leg = ctx.leg(pool, "prefill")
    try:
        answer = await prefill(ctx, leg)
    except GatewayError as err:
        if not fallback or (reason := local.failed_reason(err, bool(leg.tried))) is None:
            raise
        return await local.serve(ctx, pool, reason, err.message)
    return await _decode(ctx, pool, answer)


async def _decode(ctx: RequestContext, pool: Pool, answer: dict) -> Response | StreamRelay:
    """The decode leg, with the prefill's KV lease."""
    req = ctx.req
    lease = answer["kv_transfer_params"]
    body = dict(req.body)
    body["kv_transfer_params"] = lease
    leg = ctx.leg(pool, "decode")
    p_usage: dict = answer.get("usage") or {}
    transform = None
    if req.stream and req.include_usage and with_prefill_usage(p_usage):
        transform = functools.partial(_with_prefill_usage, p_usage=p_usage)
    try:  # until D answers 2xx the lease is the gateway's to give back
        if req.stream and resume.enabled(ctx, pool):
            return await resume.open_relay(ctx, pool, leg, body, transform)
        if req.stream:
            return await leg.open_relay(req.path, dumps(body), transform)
        await leg.open(req.path, dumps(body))
    except BaseException:
        nixl_lease.give_back(ctx, pool, lease, leg.tried)
        raise
    raw, result = await leg.read()
    return merged_response(raw, result, p_usage, leg.status, leg.content_type, ctx.request_id)


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
