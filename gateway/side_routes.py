"""The vLLM routes that name no model in a JSON body, each sent to the workers that can answer:

    GET  /version                              any healthy worker
    GET  /v1/responses/{id}                    the worker holding that response (ResponseHomes),
    POST /v1/responses/{id}/cancel             else each worker in turn until one knows it

LoRA admin routes (fanned out to a pool's workers) are in gateway.lora.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from .auth import authorization_of, check_key
from .errors import GatewayError, UpstreamError, render
from .gateway import Gateway
from .handler import request_id_of
from .pool import Endpoint, Pool

log = logging.getLogger("pd_gateway")


def side_routes(gateway: Gateway) -> APIRouter:
    api = APIRouter()

    def authorize(request: Request) -> str:
        check_key(authorization_of(request.scope["headers"]), gateway.config.auth.api_keys)
        return request_id_of(dict(request.scope["headers"]))

    @api.get("/version")
    async def version(request: Request) -> Response:
        try:
            rid = authorize(request)
            eps = _serving(gateway)
            if not eps:
                raise GatewayError(503, "no healthy worker", "no_healthy_worker", headers={"retry-after": "1"})
            return await _call(gateway, eps[0], "GET", "/version", rid)
        except GatewayError as err:
            return render(err)

    @api.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str, request: Request) -> Response:
        query = request.url.query
        path = f"/v1/responses/{response_id}" + (f"?{query}" if query else "")
        return await _at_home(gateway, request, authorize, "GET", response_id, path)

    @api.post("/v1/responses/{response_id}/cancel")
    async def cancel(response_id: str, request: Request) -> Response:
        path = f"/v1/responses/{response_id}/cancel"
        return await _at_home(gateway, request, authorize, "POST", response_id, path)

    return api


def _serving(gateway: Gateway) -> list[Endpoint]:
    """Healthy endpoints that serve whole requests (replicas and decode), undrained first."""
    eps = [e for e in gateway.endpoints if e.healthy and e.role != "prefill"]
    return sorted(eps, key=lambda e: e.draining)


def pool_of(gateway: Gateway, ep: Endpoint) -> Pool:
    return next(p for p in gateway.pools if p.name == ep.pool)


async def _call(gateway: Gateway, ep: Endpoint, method: str, path: str, rid: str, body: bytes = b"") -> Response:
    headers = gateway.worker_headers(pool_of(gateway, ep), rid)
    timeout = gateway.config.timeouts.first_byte_s
    status, content_type, answer = await gateway.upstream.call(method, ep.url + path, headers, body, timeout)
    if status >= 500:
        raise UpstreamError(f"worker {ep.url} answered {status}: {answer[:300].decode(errors='replace')}")
    return Response(answer, status, media_type=content_type, headers={"x-request-id": rid})


async def _at_home(
    gateway: Gateway, request: Request, authorize: Callable[[Request], str], method: str, rid_key: str, path: str
) -> Response:
    """The answer of the worker holding response `rid_key`: its remembered home, else the first
    worker that does not answer 404."""
    try:
        rid = authorize(request)
        home = gateway.responses.home(rid_key)
        eps = _serving(gateway)
        known = [e for e in eps if e.url == home]
        last: Response | None = None
        for ep in known or eps:
            last = await _call(gateway, ep, method, path, rid)
            if last.status_code != 404:
                gateway.responses.remember(rid_key, ep.url)
                return last
        if last is None:
            raise GatewayError(503, "no healthy worker", "no_healthy_worker", headers={"retry-after": "1"})
        return last
    except GatewayError as err:
        return render(err)
