"""The kv_transfer_params "read mode" protocol (vLLM NixlConnector, vllm-neuron over EFA).

P gets a non-streaming one-token copy asking it to keep the KV for a remote decode; its
answer carries `kv_transfer_params`, which D receives with the original request. D then
pulls the KV and produces every output token, so its response goes to the client as-is.
"""

from __future__ import annotations

import functools

from starlette.responses import Response
from starlette.types import Send

from ..errors import UpstreamError
from ..leg import Leg
from ..payload import dumps, load_json
from ..pool import Pool
from ..requests import ApiRequest
from ..router import Router
from ..sse import split_events
from .common import merge_usage, prefill_body


async def prefill(router: Router, pool: Pool, req: ApiRequest, request_id: str) -> dict:
    body = prefill_body(req.body)
    body["stream"] = False
    body.pop("stream_options", None)
    body["kv_transfer_params"] = {"do_remote_decode": True}
    leg = Leg(router, pool, "prefill", req, request_id)
    await leg.open(req.path, dumps(body))
    _, answer = await leg.read()
    if not isinstance(answer.get("kv_transfer_params"), dict):
        raise UpstreamError("the prefill worker returned no kv_transfer_params; is it a kv_producer?")
    return answer


async def serve(router: Router, pool: Pool, req: ApiRequest, request_id: str, send: Send | None = None) -> Response:
    answer = await prefill(router, pool, req, request_id)
    body = dict(req.body)
    body["kv_transfer_params"] = answer["kv_transfer_params"]
    leg = Leg(router, pool, "decode", req, request_id)
    p_usage = answer.get("usage")
    if not req.stream:
        await leg.open(req.path, dumps(body))
        raw, result = await leg.read()
        if not (p_usage or {}).get("prompt_tokens_details"):
            return Response(raw, leg.status, media_type=leg.content_type, headers={"x-request-id": request_id})
        result["usage"] = merge_usage(result.get("usage"), p_usage)
        return Response(dumps(result), leg.status, media_type="application/json", headers={"x-request-id": request_id})
    transform = None
    if req.include_usage and (p_usage or {}).get("prompt_tokens_details"):
        transform = functools.partial(_with_prefill_usage, p_usage=p_usage)
    return await leg.open_relay(req.path, dumps(body), send, transform)


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
