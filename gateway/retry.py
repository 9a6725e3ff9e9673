"""Retries: another endpoint, only while nothing reached the client, within `retries.attempts`.

Two cases: an attempt that failed before the answer (connect error, a connection broken before
the head, a 5xx), and a stream that a replica broke off before its first event ("replay").
A timeout is never retried: the prompt may simply be long, and another worker would take as
long. A worker's 4xx is the client's own fault: it goes back as it is and counts against no one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import balancer
from .errors import ConnectFailed, GatewayError, Retryable, UpstreamError, UpstreamStatus
from .limits import overloaded
from .logs import safe
from .relay import OnEnd

if TYPE_CHECKING:
    from .leg import Leg

log = logging.getLogger("pd_gateway")


async def send(leg: Leg) -> None:
    """Choose an endpoint for `leg` and send; on a retryable failure, try the next one."""
    gateway, ctx = leg.gateway, leg.ctx
    loop = asyncio.get_running_loop()
    queue_until = loop.time() + ctx.deadline.queue_timeout_s
    limit = gateway.config.limits.max_inflight_per_worker
    while True:
        if leg.aborted:
            raise leg.failure(leg.aborted)
        try:
            ep = balancer.choose(leg.pool, leg.role, ctx.req, limit, exclude=leg.tried)
        except balancer.Saturated:
            await _wait_for_capacity(leg, queue_until - loop.time())
            continue
        try:
            await leg.attempt(ep)
        except (Retryable, UpstreamStatus) as err:
            leg.give_up()
            if isinstance(err, UpstreamStatus) and err.passed_through:
                raise
            gateway.outlier.failed(ep, err.message, err.kind, eject_now=isinstance(err, ConnectFailed))
            leg.tried.add(ep)
            if len(leg.tried) > gateway.config.retries.attempts or leg.aborted:
                raise
            gateway.telemetry.retried(ctx.trace, leg.pool.name, leg.role)
            log.warning("rid=%s %s; retrying on another worker", ctx.request_id, safe(err.message))
            continue
        except UpstreamError as err:  # a timeout
            leg.give_up()
            gateway.outlier.failed(ep, err.message, err.kind)
            raise
        except BaseException:
            leg.give_up()
            raise
        return


async def _wait_for_capacity(leg: Leg, remaining: float) -> None:
    try:
        if remaining <= 0:
            raise TimeoutError
        await leg.gateway.capacity.wait(remaining)
    except TimeoutError:
        limit = leg.gateway.config.limits.max_inflight_per_worker
        busy = f"every {leg.role} worker of pool '{leg.pool.name}' has {limit} requests in flight"
        raise overloaded(busy) from None


def may_replay(leg: Leg) -> bool:
    """A stream may be sent again when nothing of it reached the consumer, the worker failed
    (no timeout, abort or garbage), and another worker may be tried."""
    return (
        leg.replayable
        and not leg.last
        and not leg.timed_out
        and not leg.aborted
        and not leg.garbage
        and len(leg.tried) < leg.gateway.config.retries.attempts
    )


async def replay(leg: Leg, failure: UpstreamError, on_end: OnEnd) -> None:
    """Send a stream that broke off before its first event to another worker; its 2xx answer
    re-arms the consumer (see Leg._sent)."""
    log.warning(
        "rid=%s %s before its first event; retrying on another worker", leg.ctx.request_id, safe(failure.message)
    )
    assert leg.ep is not None
    leg.tried.add(leg.ep)
    leg.give_up()
    leg.gateway.telemetry.replayed(leg.ctx.trace, leg.pool.name)
    try:
        await send(leg)
    except UpstreamError as err:
        on_end(err)
    except GatewayError as err:
        on_end(UpstreamError(f"{failure.message}; no other worker took the request: {err.message}"))
