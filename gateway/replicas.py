"""Serving a request from a pool of data-parallel replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import Response

from .errors import UpstreamError
from .leg import Leg
from .pool import Pool
from .relay import StreamRelay
from .requests import ApiRequest
from .router import Router
from .sse import error_event


async def guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Relay events; a failure after the first byte ends the stream with an error event."""
    try:
        async for run in events:
            yield run
    except UpstreamError as err:
        yield error_event(err.to_dict())


async def forward(router: Router, pool: Pool, req: ApiRequest, request_id: str) -> Response | StreamRelay:
    leg = Leg(router, pool, "replica", request_id)
    await leg.open(req.path, req.raw)
    if not req.stream:
        body = await leg.read()
        return Response(body, leg.status, media_type=leg.content_type, headers={"x-request-id": request_id})
    return StreamRelay(
        guarded(leg.events()),
        request_id,
        on_disconnect=lambda: leg.abort("client disconnected"),
        on_close=leg.release,
    )
