"""Serving a request from a pool of data-parallel replicas."""

from __future__ import annotations

from starlette.responses import Response

from . import resume
from .context import RequestContext
from .pool import Pool, Role
from .relay import StreamRelay


async def serve(ctx: RequestContext, pool: Pool, role: Role = "replica") -> Response | StreamRelay:
    """`role`: a PD pool's decode serves a request alone as a replica would (disagg.local)."""
    req = ctx.req
    leg = ctx.leg(pool, role, replayable=True)
    if not req.stream:
        await leg.open(req.path, req.raw)
        body, _ = await leg.read()  # read() refuses garbage: it must not pass as a 200
        return Response(body, leg.status, media_type=leg.content_type, headers={"x-request-id": ctx.request_id})
    if resume.enabled(ctx, pool):
        return await resume.open_relay(ctx, pool, leg, req.body)
    return await leg.open_relay(req.path, req.raw)
