"""Serving a request from a pool of data-parallel replicas."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Send

from .leg import Leg
from .pool import Pool
from .relay import StreamRelay
from .requests import ApiRequest
from .router import Router


async def forward(router: Router, pool: Pool, req: ApiRequest, request_id: str,
                  send: Send | None = None) -> Response | StreamRelay:
    leg = Leg(router, pool, "replica", req, request_id, replayable=True)
    if not req.stream:
        await leg.open(req.path, req.raw)
        body, _ = await leg.read()  # read() refuses garbage: it must not pass as a 200
        return Response(body, leg.status, media_type=leg.content_type, headers={"x-request-id": request_id})
    return await leg.open_relay(req.path, req.raw, send)
