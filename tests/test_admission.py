"""Admission (circuit breaking): the in-flight limit, the bounded queue, and who gets a freed slot."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import GatewayError
from gateway.limits import Admission


async def test_requests_past_the_limit_wait_in_order_and_get_freed_slots():
    adm = Admission(limit=1, queue=2, timeout_s=5)
    await adm.enter()
    second, third = asyncio.ensure_future(adm.enter()), asyncio.ensure_future(adm.enter())
    await asyncio.sleep(0)
    assert adm.queued == 2 and not second.done()
    adm.leave()
    await second
    assert not third.done() and adm.inflight == 1  # the slot was handed over, not given back
    adm.leave()
    await third
    adm.leave()
    assert adm.inflight == 0 and adm.queued == 0


async def test_a_full_queue_is_a_429_with_retry_after():
    adm = Admission(limit=1, queue=0, timeout_s=5)
    await adm.enter()
    with pytest.raises(GatewayError) as err:
        await adm.enter()
    assert err.value.status == 429 and err.value.headers["retry-after"] == "1"


async def test_a_wait_past_the_queue_timeout_is_a_429_and_leaves_the_queue():
    adm = Admission(limit=1, queue=1, timeout_s=0.01)
    await adm.enter()
    with pytest.raises(GatewayError) as err:
        await adm.enter()
    assert err.value.status == 429 and adm.queued == 0


async def test_a_waiter_cancelled_in_the_queue_takes_no_slot():
    adm = Admission(limit=1, queue=1, timeout_s=5)
    await adm.enter()
    waiter = asyncio.ensure_future(adm.enter())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert adm.queued == 0
    adm.leave()
    assert adm.inflight == 0
