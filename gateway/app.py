"""The FastAPI application: OpenAI routes, health, readiness, metrics, admin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from . import replicas
from .admin import admin_routes
from .auth import check_key
from .config import GatewayConfig
from .disagg import PROTOCOLS
from .errors import GatewayError, UpstreamStatus, error_dict
from .relay import ClientWatch, StreamRelay
from .requests import Route, parse_request
from .router import Router

log = logging.getLogger("pd_gateway")


Serve = Callable[[Route, dict[bytes, bytes], "bytes | None", Receive, "Send | None"], Awaitable[Response]]
FAST_ROUTES: dict[str, Route] = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


class FastPath:
    """Serves the two OpenAI routes straight from the ASGI server; the rest goes to FastAPI.

    FastAPI's routing and middleware wrap `send` in two closures, which costs every relayed
    chunk; the hot routes skip them, and Starlette's Request too (headers are read from
    the scope in one pass). The FastAPI routes stay for everything else (and docs).
    """

    def __init__(self, app: FastAPI, serve: Serve, body_limit: int) -> None:
        self.app = app
        self.state = app.state
        self.serve = serve
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = FAST_ROUTES.get(scope["path"])
            if route is not None:
                await self.handle(route, dict(scope["headers"]), None, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def handle(self, route: Route, headers: dict[bytes, bytes], body: bytes | None,
                     scope: Scope, receive: Receive, send: Send) -> None:
        """One OpenAI request; `body` is None when it is still to be read from `receive`."""
        response = await self.serve(route, headers, body, receive, send)
        await response(scope, receive, send)


def create_app(config: GatewayConfig) -> FastPath:
    router = Router(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await router.health.check_all()
        tasks = [asyncio.create_task(router.health.run()), asyncio.create_task(router.watchdog.run())]
        tasks += [asyncio.create_task(job) for job in router.background()]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await router.upstream.close()

    app = FastAPI(title="pd-gateway", lifespan=lifespan)
    app.state.router = router
    app.include_router(admin_routes(router))

    async def serve(route: Route, headers: dict[bytes, bytes], body: bytes | None,
                    receive: Receive, send: Send | None) -> Response:
        """The OpenAI routes; `headers` are the request's, names lower-case (as ASGI has them).

        Given the client's `send`, a stream's first events may go out before this returns."""
        given_id = headers.get(b"x-request-id")
        # Ids only need to be unique, not secret: no getrandom syscall on the hot path.
        request_id = given_id.decode("latin-1") if given_id else f"{random.getrandbits(128):032x}"
        try:
            if config.auth.api_keys:
                check_key(headers.get(b"authorization", b"").decode("latin-1"), config.auth.api_keys)
            raw = body if body is not None else await _read_body(
                receive, headers.get(b"content-length", b""), config.limits.max_body_bytes)
            await router.admission.enter()
        except GatewayError as err:
            return _refused(err, request_id, route, router)
        except _ClientGone:
            return _gone(request_id, route, router)
        watch = ClientWatch(receive)
        try:
            result = await dispatch(route, raw, request_id, send, headers.get(b"x-session-id"))
        except asyncio.CancelledError:
            router.admission.leave()
            if not watch.disconnected:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return _gone(request_id, route, router)
        finally:
            watch.callback = _ignore
        if isinstance(result, StreamRelay):
            result.watch = watch
            result.closers.append(router.admission.leave)
        else:
            watch.close()
            router.admission.leave()
        return result

    async def dispatch(route: Route, raw: bytes, request_id: str, send: Send | None,
                       session: bytes | None) -> Response:
        try:
            req = parse_request(route, raw, config.limits, session.decode("latin-1") if session else None)
            pool = router.pool_for(req.model)
            if pool.kind == "replicas":
                result = await replicas.forward(router, pool, req, request_id, send)
            else:
                result = await PROTOCOLS[pool.protocol](router, pool, req, request_id, send)
        except GatewayError as err:
            return _refused(err, request_id, route, router)
        except UpstreamStatus as err:
            return _upstream_status(err, request_id, route, router)
        router.metrics.inc("pd_gateway_requests_total", route=route, status="200")
        return result

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve("completions", dict(request.scope["headers"]), None, request.receive, None)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serve("chat", dict(request.scope["headers"]), None, request.receive, None)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            check_key(request.headers.get("authorization"), config.auth.api_keys)
        except GatewayError as err:
            return err.to_response()
        return JSONResponse({"object": "list", "data": router.model_cards()})

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        pools = {p.name: p.ready for p in router.pools}
        return JSONResponse({"ready": router.ready, "pools": pools}, 200 if router.ready else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = router.metrics.render(router.pools, router.admission)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_dict(str(exc.detail), exc.status_code), exc.status_code)

    return FastPath(app, serve, config.limits.max_body_bytes)


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


async def _read_body(receive: Receive, length: bytes, limit: int) -> bytes:
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"request body exceeds {limit} bytes", "body_too_large")


def _gone(request_id: str, route: str, router: Router) -> Response:
    log.info("rid=%s client disconnected before the response started", request_id)
    router.metrics.inc("pd_gateway_requests_total", route=route, status="499")
    return Response(status_code=499)


def _ignore() -> None:
    pass


def _refused(err: GatewayError, request_id: str, route: str, router: Router) -> Response:
    log.info("rid=%s %s %d: %s", request_id, route, err.status, err.message)
    router.metrics.inc("pd_gateway_requests_total", route=route, status=str(err.status))
    return err.to_response(request_id)


def _upstream_status(err: UpstreamStatus, request_id: str, route: str, router: Router) -> Response:
    """A worker's 4xx goes to the client as-is; a 5xx becomes a 502 naming the worker's message."""
    router.metrics.inc("pd_gateway_requests_total", route=route, status=str(err.status))
    headers = {"x-request-id": request_id}
    if err.status < 500:
        return Response(err.body, err.status, media_type=err.content_type, headers=headers)
    detail = err.body[:500].decode(errors="replace")
    log.warning("rid=%s worker answered %d: %s", request_id, err.status, detail)
    body = error_dict(f"worker answered {err.status}: {detail}", 502, "upstream_error")
    return Response(json.dumps(body), 502, media_type="application/json", headers=headers)
