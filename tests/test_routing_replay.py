"""The routing benchmark's simulated-time replay: deterministic, so its outcomes can be asserted."""

from __future__ import annotations

from bench.routing import MODEL
from bench.routing_replay import replay
from bench.routing_workloads import multi_turn, no_sharing, shared_prefix


def test_prefix_aware_caches_more_of_a_chat_than_least_outstanding_and_the_replay_repeats() -> None:
    chat = multi_turn(MODEL, conversations=6, turns=3)
    lo, _ = replay(chat, "least_outstanding")
    pa, pa_p50 = replay(chat, "prefix_aware")
    hit = lambda row: float(row[3].rstrip("%"))  # noqa: E731
    assert hit(pa) > hit(lo)
    assert replay(chat, "prefix_aware") == (pa, pa_p50)  # no clock, no sockets: the same run twice


def test_nothing_is_cached_without_sharing_and_a_shared_prefix_mostly_is() -> None:
    row, _ = replay(no_sharing(MODEL, clients=4, per_client=2), "prefix_aware;score=cost")
    assert row[3] == "0.0%"
    row, _ = replay(shared_prefix(MODEL, prompts=2, clients=8, per_client=3, low=500, high=600), "prefix_aware")
    assert float(row[3].rstrip("%")) > 50


def test_replicas_behind_round_robin_keep_a_chat_on_its_workers() -> None:
    """Four independent gateways taking requests in turns cache a chat almost as one does: each
    conversation's opening sends it to the same worker from every one of them."""
    chat = multi_turn(MODEL, conversations=8, turns=4)
    hit = lambda row: float(row[3].rstrip("%"))  # noqa: E731
    one, four = replay(chat, "prefix_aware")[0], replay(chat, "prefix_aware", replicas=4)[0]
    old = replay(chat, "prefix_aware;affinity_chars=0", replicas=4)[0]
    assert hit(four) >= 0.97 * hit(one) and hit(old) < 0.9 * hit(one)
