"""Admin routes that change the running config (gateway/reload.py); they need an admin key.

    POST /admin/config/reload       no body: read the config file again; a JSON body: that config
    POST /admin/endpoints/add       {"pool": NAME, "role": "replica"|"prefill"|"decode", "url": URL}
    POST /admin/endpoints/remove    the same; the endpoint drains and leaves once idle

An invalid config is refused whole (400, the message names the field) and the running one kept.
An endpoint added or removed here lasts until the next reload from the file.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from .auth import authorization_of, check_key
from .config import ConfigError
from .errors import GatewayError, render
from .gateway import Gateway
from .reload import with_endpoint


def config_routes(gateway: Gateway) -> APIRouter:
    api = APIRouter(prefix="/admin")

    def authorize(request: Request) -> None:
        keys = gateway.config.auth.admin_keys
        if not keys:
            raise GatewayError(404, "admin endpoints are disabled (no auth.admin_keys configured)", "not_found")
        check_key(authorization_of(request.scope["headers"]), keys, "admin key")

    @api.post("/config/reload")
    async def reload(request: Request) -> Response:
        try:
            authorize(request)
            raw = await request.body()
            if raw.strip():
                summary = gateway.reloader.apply_data(_object(raw))
            else:
                summary = gateway.reloader.reload()
        except GatewayError as err:
            return render(err)
        except ConfigError as err:
            return render(GatewayError(400, str(err), "invalid_config"))
        return JSONResponse(summary)

    async def change(request: Request, present: bool) -> Response:
        try:
            authorize(request)
            body = _object(await request.body())
            pool, role, url = (body.get(k) for k in ("pool", "role", "url"))
            if not (isinstance(pool, str) and isinstance(role, str) and isinstance(url, str)):
                raise GatewayError(400, 'body must be {"pool": ..., "role": ..., "url": ...}', param="url")
            summary = gateway.reloader.apply_data(with_endpoint(gateway.config, pool, role, url, present))
        except GatewayError as err:
            return render(err)
        except ConfigError as err:
            return render(GatewayError(400, str(err), "invalid_config"))
        return JSONResponse(summary)

    @api.post("/endpoints/add")
    async def add(request: Request) -> Response:
        return await change(request, True)

    @api.post("/endpoints/remove")
    async def remove(request: Request) -> Response:
        return await change(request, False)

    return api


def _object(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise GatewayError(400, "body must be a JSON object")
    return data
