"""A PD request served by a decode alone, as a plain request: the decode-local path.

Two reasons send a request there instead of through the prefill leg (`nixl` pools):
- decode-local fallback (`decode_local_fallback`, on by default): no prefill endpoint can take
  the request (none healthy, all ejected, drained or full), or its prefill leg failed before
  its answer once retries ran out (connect errors, 5xx, a broken or unusable answer). A
  prefill's 4xx is the client's and goes back as it is; a prefill timeout is not retried
  anywhere (the prompt may simply be long) and is answered 504 as before.
- selective disaggregation (`disaggregate_min_tokens`): the prompt's tokens not cached on the
  decode are too few for a KV transfer to pay for its round trip (selective.py).

A decode of vLLM's NixlConnector pools runs with `kv_role: kv_both`: without
`kv_transfer_params` it prefills locally, as a colocated worker does. Every such request is
counted (`pd_gateway_pd_decode_local{pool,reason}`), logged and shown on /dashboard.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import replicas
from ..errors import GatewayError, UpstreamError, UpstreamStatus, UpstreamTimeout

if TYPE_CHECKING:
    from starlette.responses import Response

    from ..context import RequestContext
    from ..pool import Pool
    from ..relay import StreamRelay

log = logging.getLogger("pd_gateway")

# reason label values of pd_gateway_pd_decode_local
NO_PREFILL = "no_prefill"  # no prefill endpoint healthy, undrained and not ejected
PREFILL_FULL = "prefill_full"  # all at max_inflight_per_worker
PREFILL_FAILED = "prefill_failed"  # the prefill leg failed before its answer, retries exhausted
SHORT_PROMPT = "short_prompt"  # selective disaggregation: too few uncached tokens
REASONS = (NO_PREFILL, PREFILL_FULL, PREFILL_FAILED, SHORT_PROMPT)


def unavailable(pool: Pool, per_worker_limit: int) -> str | None:
    """Why no prefill endpoint can take a request now (a fallback reason), or None when one can."""
    routable = [e for e in pool.groups.get("prefill", ()) if e.healthy and not e.draining]
    if not routable:
        return NO_PREFILL
    if all(e.outstanding >= per_worker_limit for e in routable):
        return PREFILL_FULL
    return None


def failed_reason(err: GatewayError, tried: bool) -> str | None:
    """The fallback reason for a prefill leg that ended in `err` after trying endpoints or not
    (`tried`), or None: `err` stands (the client's fault, a timeout, the client gone)."""
    if isinstance(err, UpstreamStatus):
        return None if err.passed_through else PREFILL_FAILED
    if isinstance(err, UpstreamTimeout) or err.code == "aborted":
        return None
    if isinstance(err, UpstreamError):
        return PREFILL_FAILED
    if err.code == "no_healthy_worker":  # none left, or none left untried
        return PREFILL_FAILED if tried else NO_PREFILL
    if err.status == 429:
        return PREFILL_FULL
    return None


async def serve(ctx: RequestContext, pool: Pool, reason: str, detail: str = "") -> Response | StreamRelay:
    """The request on one of the pool's decodes, as a plain request (retried and replayed like
    a replica's: without KV from a prefill it depends on nothing else)."""
    ctx.gateway.telemetry.decode_local(ctx.trace, pool.name, reason)
    if reason != SHORT_PROMPT:
        log.warning(
            "rid=%s pool %s: decode-local fallback (%s)%s", ctx.request_id, pool.name, reason, detail and f": {detail}"
        )
    return await replicas.serve(ctx, pool, "decode")
