"""The routing benchmark's simulated-time replay: deterministic, so its outcomes can be asserted."""

from __future__ import annotations

from bench.routing import MODEL
from bench.routing_replay import replay
from bench.routing_workloads import multi_turn, no_sharing, shared_prefix


def test_prefix_aware_caches_more_of_a_chat_than_least_outstanding_and_the_replay_repeats() -> None:
    chat = multi_turn(MODEL, conversations=6, turns=3)
    lo, _ = replay(chat, "least_outstanding")
    pa, pa_p50 = replay(chat, "prefix_aware")
    hit = lambda row: float(row[2].rstrip("%"))  # noqa: E731
    assert hit(pa) > hit(lo)
    assert replay(chat, "prefix_aware") == (pa, pa_p50)  # no clock, no sockets: the same run twice


def test_nothing_is_cached_without_sharing_and_a_shared_prefix_mostly_is() -> None:
    row, _ = replay(no_sharing(MODEL, clients=4, per_client=2), "prefix_aware;score=cost")
    assert row[2] == "0.0%"
    row, _ = replay(shared_prefix(MODEL, prompts=2, clients=8, per_client=3, low=500, high=600), "prefix_aware")
    assert float(row[2].rstrip("%")) > 50
