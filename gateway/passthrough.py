"""Serving the routes other than completions and chat in a pool: one leg to a replica, or to a
decode endpoint of a prefill/decode pool (which serves them whole), by the role's policy,
with the same retries, timeouts, relay and telemetry as completions."""

from __future__ import annotations

from starlette.responses import Response

from .context import RequestContext
from .pool import Pool
from .relay import StreamRelay


async def serve(ctx: RequestContext, pool: Pool) -> Response | StreamRelay:
    req = ctx.req
    leg = ctx.leg(pool, "replica" if pool.kind == "replicas" else "decode", replayable=True)
    homes = ctx.gateway.responses if req.route == "responses" else None
    if req.stream:
        transform = homes.recorder(lambda: leg.ep.url if leg.ep else None) if homes is not None else None
        return await leg.open_relay(req.path, req.raw, transform)
    await leg.open(req.path, req.raw)
    body, answer = await leg.read(expect_json=req.content_type is None)  # a form's answer may be text
    if homes is not None and leg.ep is not None:
        homes.remember(answer.get("id"), leg.ep.url)
    return Response(body, leg.status, media_type=leg.content_type, headers={"x-request-id": ctx.request_id})
