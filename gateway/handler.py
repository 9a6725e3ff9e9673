"""The OpenAI routes: one request's path through the gateway, step by step.

    identify    the request id (the client's, if it is sane)
    authorize   the API key (the short path checked it at the head, before the body)
    read body   (the short path has it already)
    watch       from now on a disconnect cancels the request
    admit       an admission slot, or a wait in the queue, or 429
    parse       the few fields the gateway reads; the rest passes through
    route       the pool that serves the model, and what that pool accepts
    dispatch    replicas, or a prefill/decode protocol: legs to workers
    respond     the answer, or the stream relayed event by event

Whatever happens, `RequestContext.close` gives back what the request holds, and every error
reaches the client as the OpenAI envelope (errors.render).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import passthrough, replicas
from .auth import HeaderList, authorization
from .config import GatewayConfig
from .context import RequestContext
from .disagg import PROTOCOLS, precheck, prompt_list
from .errors import ClientGone, GatewayError, UpstreamStatus, internal_error, render
from .gateway import Gateway
from .limits import read_body
from .logs import safe
from .pool import Pool
from .relay import StreamRelay
from .requests import ApiRequest, parse_request
from .routes import SPECS, Route
from .writer import Writer

log = logging.getLogger("pd_gateway")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,256}")


def request_id_of(headers: Mapping[bytes, bytes]) -> str:
    """The client's X-Request-Id when it is 1-256 characters of [A-Za-z0-9._:/+=@-], else a fresh one."""
    given = headers.get(b"x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given.decode("ascii")
    # Ids only need to be unique, not secret: no getrandom syscall on the hot path.
    return f"{random.getrandbits(128):032x}"


class Handler:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.config  # a reload swaps it

    async def __call__(
        self,
        route: Route,
        headers: Mapping[bytes, bytes],
        header_list: HeaderList,
        body: bytes | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        writer: Writer,
    ) -> None:
        """One request; `body` is None when it is still to be read from `receive`."""
        ctx = RequestContext(self.gateway, route, request_id_of(headers), writer)
        ctx.join_trace(headers)
        response: Response | StreamRelay | None = None
        try:
            response = await self.respond(ctx, headers, header_list, body, receive)
            await response(scope, receive, send)
            ctx.finished = True
        except asyncio.CancelledError:
            if not ctx.disconnected:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            log.info("rid=%s client disconnected", ctx.request_id)
        finally:
            ctx.close()
            self.gateway.telemetry.finish(ctx.trace, *_ending(response, ctx))

    async def respond(
        self,
        ctx: RequestContext,
        headers: Mapping[bytes, bytes],
        header_list: HeaderList,
        body: bytes | None,
        receive: Receive,
    ) -> Response | StreamRelay:
        try:
            _check_cross_origin(headers)
            # the short path refused an unknown key at the head (protocol._at_the_door); here: whose it is
            ctx.tenant = self.gateway.tenants.identify(authorization(headers, header_list))
            if body is None:
                body = await self.read_body(ctx, receive, headers)
            ctx.watch_client(receive)
            await ctx.admit(len(body))
            session = headers.get(b"x-session-id")
            session_key = session.decode("latin-1") if session else None
            content_type = headers.get(b"content-type", b"")
            req = parse_request(ctx.route, body, self.config.limits, session_key, content_type)
            self.gateway.names.rewrite(req)  # an alias or split: the served name
            ctx.parsed(req)
            pool = self.gateway.pool_for(ctx.req.model)
            ctx.routed(pool)
            _accept(pool, ctx.req)
            response = await self.dispatch(ctx, pool)
        except GatewayError as err:
            return self.refuse(ctx, err)
        except ClientGone:
            return self.gone(ctx)
        except asyncio.CancelledError:
            if not ctx.disconnected:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return self.gone(ctx)
        except Exception:
            log.exception("rid=%s failed", ctx.request_id)
            return self.refuse(ctx, internal_error())
        return response

    async def read_body(self, ctx: RequestContext, receive: Receive, headers: Mapping[bytes, bytes]) -> bytes:
        """The body from ASGI `receive`, counted at the front door until the request ends."""
        front = self.gateway.front
        raw = await read_body(receive, headers, self.config.limits.max_body_bytes, front)
        ctx.on_close(lambda: front.give_back(len(raw)))
        return raw

    @staticmethod
    async def dispatch(ctx: RequestContext, pool: Pool) -> Response | StreamRelay:
        if not SPECS[ctx.route].pd:
            return await passthrough.serve(ctx, pool)
        if pool.kind == "replicas":
            return await replicas.serve(ctx, pool)
        assert pool.protocol is not None
        if ctx.req.prompt_count > 1:  # each prompt its own P->D request
            return await prompt_list.serve(ctx, pool, PROTOCOLS[pool.protocol])
        return await PROTOCOLS[pool.protocol](ctx, pool)

    def refuse(self, ctx: RequestContext, err: GatewayError) -> Response:
        if isinstance(err, UpstreamStatus) and not err.passed_through:
            log.warning("rid=%s %s", ctx.request_id, safe(err.message, 600))
        else:
            log.info("rid=%s %s %d: %s", ctx.request_id, ctx.route, err.status, safe(err.message))
        return render(err, ctx.request_id)

    @staticmethod
    def gone(ctx: RequestContext) -> Response:
        log.info("rid=%s client disconnected before the response started", ctx.request_id)
        return Response(status_code=499)


def _ending(response: Response | StreamRelay | None, ctx: RequestContext) -> tuple[int, str | None]:
    """How the request ended, for telemetry: the status the client got, and the outcome (None:
    as the status says)."""
    if isinstance(response, StreamRelay):
        return response.status, response.outcome
    if response is None:
        return (499, "client_disconnect") if ctx.disconnected else (500, None)
    return response.status_code, None


def _check_cross_origin(headers: Mapping[bytes, bytes]) -> None:
    """A browser's request (it has an Origin) must say its body is JSON.

    A page may POST text/plain, a form or a typeless Blob to any origin without asking first
    (a CORS "simple request"); a JSON content type needs the preflight the gateway never
    grants. Clients without an Origin (curl, SDKs, llmperf) are not held to it."""
    if b"origin" not in headers:
        return
    media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if media != b"application/json" and not media.endswith(b"+json"):
        raise GatewayError(
            415, "a request with an Origin header must have content-type: application/json", "unsupported_media_type"
        )


def _accept(pool: Pool, req: ApiRequest) -> None:
    """What the chosen pool takes of the request: fields the gateway owns, shapes it serves."""
    if not pool.config.trust_kv_transfer_params:
        req.without("kv_transfer_params")
    if pool.kind == "pd" and req.prompt_count > 1 and not pool.config.split_prompt_lists:
        raise GatewayError(
            400,
            f"pool '{pool.name}' (prefill/decode) serves one prompt per request; send each prompt as its own request",
            "multiple_prompts",
            param="prompt",
        )
    if pool.kind == "pd":
        precheck.check(req)  # what the decode would refuse, before the prefill does any work
