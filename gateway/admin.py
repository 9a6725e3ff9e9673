"""Admin endpoints: list workers, drain and undrain one. Need an admin key."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from .auth import authorization_of, check_key
from .errors import GatewayError, render
from .gateway import Gateway
from .pool import Endpoint


def admin_routes(gateway: Gateway) -> APIRouter:
    api = APIRouter(prefix="/admin")

    def authorize(request: Request) -> None:
        if not gateway.config.auth.admin_keys:
            raise GatewayError(404, "admin endpoints are disabled (no auth.admin_keys configured)", "not_found")
        check_key(authorization_of(request.scope["headers"]), gateway.config.auth.admin_keys, "admin key")

    @api.get("/workers")
    async def workers(request: Request) -> Response:
        try:
            authorize(request)
        except GatewayError as err:
            return render(err)
        now = asyncio.get_running_loop().time()
        return JSONResponse({"workers": [_describe(e, now) for e in gateway.endpoints]})

    async def set_draining(request: Request, draining: bool) -> Response:
        try:
            authorize(request)
            ep = _find(gateway, await request.body())
        except GatewayError as err:
            return render(err)
        ep.draining = draining
        return JSONResponse(_describe(ep, asyncio.get_running_loop().time()))

    @api.post("/workers/drain")
    async def drain(request: Request) -> Response:
        return await set_draining(request, True)

    @api.post("/workers/undrain")
    async def undrain(request: Request) -> Response:
        return await set_draining(request, False)

    return api


def _find(gateway: Gateway, raw: bytes) -> Endpoint:
    try:
        url = json.loads(raw).get("url")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deeply
        url = None
    if not isinstance(url, str):
        raise GatewayError(400, 'body must be {"url": "<worker url>"}')
    for ep in gateway.endpoints:
        if ep.url == url.rstrip("/"):
            return ep
    raise GatewayError(404, f"no worker {url}", "worker_not_found")


def _describe(ep: Endpoint, now: float) -> dict:
    return {
        "url": ep.url,
        "pool": ep.pool,
        "role": ep.role,
        "healthy": ep.healthy,
        "draining": ep.draining,
        "ejected_for_s": round(max(0.0, ep.ejected_until - now), 3),
        "outstanding": ep.outstanding,
        "outstanding_prompt_tokens": ep.outstanding_tokens,
        "models": sorted(ep.model_ids),
    }
