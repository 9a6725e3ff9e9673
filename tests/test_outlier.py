"""Outlier ejection's accounting: thresholds, doubling ejections, the cap on a group's share."""

from __future__ import annotations

import asyncio

from gateway.config import Outlier
from gateway.limits import Admission
from gateway.outlier import OutlierDetector
from gateway.pool import Endpoint
from gateway.telemetry import Telemetry


def _group(n: int) -> list[Endpoint]:
    return [Endpoint(f"http://w{i}", "replica", "dp", healthy=True) for i in range(n)]


def _detector(group: list[Endpoint], **config: object) -> OutlierDetector:
    return OutlierDetector(Outlier(**config), lambda ep: group, Telemetry([], Admission(1, 0, 1)))


async def test_consecutive_failures_eject_and_a_success_resets_the_count():
    group = _group(2)
    detector = _detector(group, consecutive_failures=3, base_ejection_s=5)
    ep = group[0]
    detector.failed(ep, "5xx")
    detector.failed(ep, "5xx")
    detector.succeeded(ep)
    detector.failed(ep, "5xx")
    assert ep.healthy and ep.ejections == 0
    detector.failed(ep, "5xx")
    detector.failed(ep, "5xx")
    now = asyncio.get_running_loop().time()
    assert not ep.healthy and ep.ejections == 1 and 4.9 < ep.ejected_until - now <= 5


async def test_each_repeat_ejection_lasts_twice_as_long_up_to_the_maximum():
    group = _group(2)
    detector = _detector(group, base_ejection_s=5, max_ejection_s=12)
    ep = group[0]
    lengths = []
    for _ in range(3):
        detector.failed(ep, "connect", eject_now=True)
        lengths.append(round(ep.ejected_until - asyncio.get_running_loop().time()))
        ep.ejected_until = 0.0  # the ejection is over
    assert lengths == [5, 10, 12]


async def test_never_more_than_the_maximum_share_of_a_group_is_ejected():
    group = _group(4)
    detector = _detector(group, max_ejection_percent=50)
    for ep in group:
        detector.failed(ep, "connect", eject_now=True)
    assert sum(not ep.healthy for ep in group) == 2
