"""Serving a request from a pool of data-parallel replicas."""

from __future__ import annotations

from starlette.responses import Response

from .leg import Leg
from .pool import Pool
from .relay import StreamRelay
from .requests import ApiRequest
from .router import Router


async def forward(router: Router, pool: Pool, req: ApiRequest, request_id: str) -> Response | StreamRelay:
    leg = Leg(router, pool, "replica", request_id)
    await leg.open(req.path, req.raw)
    if not req.stream:
        body, _ = await leg.read()  # read() refuses garbage: it must not pass as a 200
        return Response(body, leg.status, media_type=leg.content_type, headers={"x-request-id": request_id})
    return StreamRelay(
        leg,
        request_id,
        on_disconnect=lambda: leg.abort("client disconnected"),
        on_close=leg.release,
    )
