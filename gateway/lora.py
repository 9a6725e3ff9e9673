"""LoRA adapters: loading and unloading through the gateway (admin), fanned out to every worker
of a pool, with each worker's model list refreshed at once so that requests for the adapter go
only to workers that have it (balancer.choose) from the next request on.

    POST /v1/load_lora_adapter?pool=<name>     {"lora_name", "lora_path", ...}  (vLLM's body)
    POST /v1/unload_lora_adapter?pool=<name>   {"lora_name"}

Without `pool`, every pool's workers (prefill and decode alike: both run the adapter). The
answer is vLLM's when every worker agrees; otherwise a 502 whose message lists each worker's.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from .auth import authorization_of, check_key
from .errors import GatewayError, UpstreamError, render
from .gateway import Gateway
from .handler import request_id_of
from .pool import Endpoint


def lora_routes(gateway: Gateway) -> APIRouter:
    api = APIRouter()

    async def fan_out(request: Request, path: str) -> Response:
        try:
            if not gateway.config.auth.admin_keys:
                raise GatewayError(404, "LoRA admin routes are disabled (no auth.admin_keys configured)", "not_found")
            check_key(authorization_of(request.scope["headers"]), gateway.config.auth.admin_keys, "admin key")
            eps = _targets(gateway, request.query_params.get("pool"))
            body = await request.body()
            rid = request_id_of(dict(request.scope["headers"]))
            answers = await asyncio.gather(*(_send(gateway, ep, path, body, rid) for ep in eps))
        except GatewayError as err:
            return render(err)
        return _combined(eps, answers, rid)

    @api.post("/v1/load_lora_adapter")
    async def load(request: Request) -> Response:
        return await fan_out(request, "/v1/load_lora_adapter")

    @api.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> Response:
        return await fan_out(request, "/v1/unload_lora_adapter")

    return api


def _targets(gateway: Gateway, pool: str | None) -> list[Endpoint]:
    pools = [p for p in gateway.pools if pool is None or p.name == pool]
    if not pools:
        raise GatewayError(404, f"no pool '{pool}'", "pool_not_found", param="pool")
    eps = [e for p in pools for e in p.endpoints if e.healthy]
    if not eps:
        raise GatewayError(503, "no healthy worker to load the adapter on", "no_healthy_worker")
    return eps


async def _send(gateway: Gateway, ep: Endpoint, path: str, body: bytes, rid: str) -> tuple[int, str, bytes]:
    pool = next(p for p in gateway.pools if p.name == ep.pool)
    headers = gateway.worker_headers(pool, rid)
    try:
        answer = await gateway.upstream.call("POST", ep.url + path, headers, body, gateway.config.timeouts.first_byte_s)
    except UpstreamError as err:
        return 502, "text/plain", err.message.encode()
    try:  # the adapter is there (or gone) now: route by it from the next request on
        await gateway.health.refresh_models(ep)
    except Exception:  # noqa: BLE001 - the next health check refreshes it
        pass
    return answer


def _combined(eps: list[Endpoint], answers: list[tuple[int, str, bytes]], rid: str) -> Response:
    statuses = {status for status, _, _ in answers}
    status, content_type, body = answers[0]
    headers = {"x-request-id": rid}
    if len(statuses) == 1:
        return Response(body, status, media_type=content_type, headers=headers)
    each = {ep.url: f"{s}: {b[:200].decode(errors='replace')}" for ep, (s, _, b) in zip(eps, answers, strict=True)}
    message = "the workers did not all agree; each one's answer: " + "; ".join(f"{u} {a}" for u, a in each.items())
    return JSONResponse(GatewayError(502, message, "partial_failure").envelope(), 502, headers=headers)
