"""The ASGI application: the OpenAI routes through `Handler`, the rest through FastAPI
(models, health, readiness, metrics, admin, docs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from .admin import admin_routes
from .admin_config import config_routes
from .auth import authorization_of, check_access
from .config import GatewayConfig
from .dashboard import dashboard_routes
from .errors import GatewayError, envelope, internal_error, render
from .gateway import Gateway
from .handler import Handler
from .lora import lora_routes
from .reload import Source
from .routes import ROUTES
from .side_routes import side_routes
from .telemetry import CONTENT_TYPE_LATEST
from .writer import AsgiWriter

if TYPE_CHECKING:
    from .discovery.runner import Discovery

log = logging.getLogger("pd_gateway")
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


class FastPath:
    """Sends the OpenAI POST routes straight to the handler and everything else to FastAPI.

    FastAPI's routing and middleware wrap `send` in closures that every relayed chunk would
    pay for; the OpenAI routes skip them. The docs are guarded here, since FastAPI serves
    them outside any route a dependency could guard.
    """

    def __init__(self, app: FastAPI, handler: Handler) -> None:
        self.app = app
        self.state = app.state
        self.handler = handler
        self.paths = {path for r in app.routes if isinstance(path := getattr(r, "path", None), str)}

    @property
    def config(self) -> GatewayConfig:
        return self.handler.config  # a reload swaps it

    @property
    def body_limit(self) -> int:
        return self.config.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path in ROUTES:
                if scope["method"] != "POST":
                    await _not_allowed(scope, receive, send)
                    return
                header_list = scope["headers"]
                await self.handler(
                    ROUTES[path], dict(header_list), header_list, None, scope, receive, send, AsgiWriter(send)
                )
                return
            if path in DOCS_PATHS:
                try:
                    auth, identify = self.config.auth, self.handler.gateway.tenants.identify
                    check_access(auth.docs, auth, authorization_of(scope["headers"]), "docs", identify)
                except GatewayError as err:
                    await render(err)(scope, receive, send)
                    return
            if path.endswith("/") and path.rstrip("/") in self.paths:
                await _without_slash(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _discovery(gateway: Gateway) -> Discovery | None:
    """Pod watchers for the pools with `discovery:`, started; lightkube loads only for them."""
    if all(pool.config.discovery is None for pool in gateway.pools):
        return None
    from .discovery.runner import Discovery

    discovery = Discovery(gateway.pools, check=gateway.health.check)
    discovery.start()
    return discovery


async def _without_slash(scope: Scope, receive: Receive, send: Send) -> None:
    """A route asked for with a trailing slash: 307 to it without one, by a relative Location
    (Starlette's own redirect builds an absolute one from the client's Host header)."""
    target = scope["path"].rstrip("/")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    await RedirectResponse(target, 307)(scope, receive, send)


async def _not_allowed(scope: Scope, receive: Receive, send: Send) -> None:
    err = GatewayError(405, f"{scope['method']} is not allowed on {scope['path']}; use POST", "method_not_allowed")
    err.headers["allow"] = "POST"
    await render(err)(scope, receive, send)


def create_app(config: GatewayConfig, source: Source | None = None) -> FastPath:
    """`source`: reads the config again, for `POST /admin/config/reload` and SIGHUP."""
    gateway = Gateway(config)
    gateway.reloader.source = source

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        discovery = _discovery(gateway)
        await gateway.health.check_all()
        tasks = [asyncio.create_task(gateway.health.run()), asyncio.create_task(gateway.watchdog.run())]
        tasks += [asyncio.create_task(job) for job in gateway.background()]
        gateway.reloader.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            gateway.reloader.stop()
            if discovery is not None:
                await discovery.stop()
            await gateway.upstream.close()
            await asyncio.to_thread(gateway.tracing.close)  # the last spans go out

    docs = config.auth.docs != "off"
    app = FastAPI(
        title="pd-gateway",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.router.redirect_slashes = False  # FastPath redirects, relatively
    app.state.gateway = gateway
    app.include_router(admin_routes(gateway))
    app.include_router(config_routes(gateway))
    app.include_router(dashboard_routes(gateway))
    app.include_router(side_routes(gateway))
    app.include_router(lora_routes(gateway))
    _add_status_routes(app, gateway)
    _add_error_handlers(app)
    return FastPath(app, Handler(gateway))


def _add_status_routes(app: FastAPI, gateway: Gateway) -> None:

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            gateway.tenants.identify(authorization_of(request.scope["headers"]))
        except GatewayError as err:
            return render(err)
        return JSONResponse({"object": "list", "data": gateway.model_cards()})

    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD, as GET without the body: probes
    async def health() -> JSONResponse:
        """Liveness: the process serves HTTP."""
        return JSONResponse({"status": "ok"})

    @app.api_route("/ready", methods=["GET", "HEAD"])
    async def ready() -> JSONResponse:
        """Readiness: at least one pool can serve; each pool's own state is in the body."""
        pools = {p.name: p.ready for p in gateway.pools}
        return JSONResponse({"ready": gateway.ready, "pools": pools}, 200 if gateway.ready else 503)

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics(request: Request) -> Response:
        try:
            auth = gateway.config.auth  # as reloaded
            header = authorization_of(request.scope["headers"])
            check_access(auth.metrics, auth, header, "metrics", gateway.tenants.identify)
        except GatewayError as err:
            return render(err)
        return Response(gateway.telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)


def _add_error_handlers(app: FastAPI) -> None:
    """Every answer FastAPI gives itself is the OpenAI envelope too."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(envelope(str(exc.detail), exc.status_code), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(envelope(str(exc.errors()[:3]), 400), 400)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return render(internal_error())
