"""The live status page: `/dashboard` (one static HTML file) and `/dashboard/status` (its JSON).

The page holds no data; the JSON needs an admin key when `auth.admin_keys` is set (the page
asks for it and keeps it in the tab's sessionStorage), and is open otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import statistics
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..auth import authorization_of, check_key
from ..errors import GatewayError, render
from ..gateway import Gateway
from ..pool import Endpoint, Pool
from ..telemetry import Telemetry
from ..tenants import TenantState

_HARDENING = {"x-frame-options": "DENY", "x-content-type-options": "nosniff"}


def page_headers(page: str) -> dict[str, str]:
    """The page may run only its own inline script and style (by hash), fetch only this origin,
    and be framed by no one: an injected value can neither run nor clickjack."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {"cache-control": "no-cache", "content-security-policy": policy, **_HARDENING}


def dashboard_routes(gateway: Gateway) -> APIRouter:
    api = APIRouter()
    page = resources.files(__package__).joinpath("index.html").read_text(encoding="utf-8")
    headers = page_headers(page)

    @api.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @api.get("/dashboard/status")
    async def status(request: Request) -> Response:
        try:
            check_key(authorization_of(request.scope["headers"]), gateway.config.auth.admin_keys, "admin key")
        except GatewayError as err:
            return render(err)
        return JSONResponse(snapshot(gateway), headers={"cache-control": "no-store", **_HARDENING})

    return api


def snapshot(gateway: Gateway) -> dict:
    """Pools, endpoints and request counts as the status page shows them."""
    now = asyncio.get_running_loop().time()
    telemetry = gateway.telemetry
    return {
        "ready": gateway.ready,
        "inflight": gateway.admission.inflight,
        "queued": gateway.admission.queued,
        "requests": dict(telemetry.outcomes),
        "pools": [_pool(p, now, telemetry.recent) | _pd_counts(p, telemetry) for p in gateway.pools],
        "tenants": [_tenant(t) for t in gateway.tenants.states.values()],
    }


def _pd_counts(pool: Pool, telemetry: Telemetry) -> dict:
    """A PD pool's requests served by a decode alone, by reason, and its streams resumed."""
    return {
        "decode_local": {reason: n for (name, reason), n in telemetry.local.items() if name == pool.name},
        "resumes": {outcome: n for (name, outcome), n in telemetry.resumed.items() if name == pool.name},
    }


def _tenant(t: TenantState) -> dict:
    return {
        "name": t.name,
        "priority": t.priority,
        "inflight": t.inflight,
        "queued": len(t.waiting),
        "admitted": t.admitted,
        "rejected": sum(t.rejected.values()),
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
    }


def _pool(pool: Pool, now: float, recent: dict) -> dict:
    return {
        "name": pool.name,
        "kind": pool.kind,
        "protocol": pool.protocol,
        "models": sorted({m for e in pool.endpoints for m in e.model_ids} | set(pool.config.models)),
        "ready": pool.ready,
        "endpoints": [_endpoint(e, now, recent.get(e.url, ())) for e in pool.endpoints],
    }


def _endpoint(e: Endpoint, now: float, recent: object) -> dict:
    times = list(recent)  # type: ignore[call-overload]
    return {
        "url": e.url,
        "role": e.role,
        "healthy": e.healthy,
        "ejected_for_s": round(max(0.0, e.ejected_until - now), 1),
        "draining": e.draining,
        "outstanding": e.outstanding,
        "outstanding_prompt_tokens": e.outstanding_tokens,
        # TTFT of the streams it served (a prefill worker: its prefill leg time), last few requests
        "recent_ms": round(statistics.median(times) * 1000, 2) if times else None,
        "recent_count": len(times),
    }
