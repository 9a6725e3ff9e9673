"""`score: cost` of the prefix policies (and its Backlog) as pure functions of (request, endpoint states)."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.policies import make_policy
from gateway.policies.backlog import Backlog
from gateway.pool import Pool
from tests.test_policies import SYSTEM, Req, endpoints


def cost_policy(**options: object):
    return make_policy("prefix_aware", "replica", {"score": "cost", **options})


def test_backlog_counts_the_newest_in_flight_records_and_foreign_requests_at_the_mean() -> None:
    eps = endpoints(2)
    backlog = Backlog()
    for tokens in (10.0, 20.0, 30.0):
        backlog.record(eps[0].url, tokens)
    mean = 0.0
    for tokens in (10.0, 20.0, 30.0):
        mean += (tokens - mean) / 64
    assert backlog.of(eps[0]) == 0  # nothing in flight
    eps[0].outstanding = 2
    assert backlog.of(eps[0]) == 50  # the two newest
    eps[0].outstanding = 9  # more in flight than recorded (e.g. after a restart): all of them
    assert backlog.of(eps[0]) == 60
    eps[1].foreign = 2  # another gateway's requests there
    assert backlog.of(eps[1]) == pytest.approx(2 * mean)
    backlog.forget(eps[0].url)
    assert backlog.of(eps[0]) == 0


def test_cost_follows_the_cache_until_the_queue_there_costs_more_than_a_full_prefill() -> None:
    eps = endpoints(2)
    policy, match = cost_policy(), make_policy("prefix_aware", "replica")
    for p in (policy, match):
        p.routed(Req(SYSTEM, prompt_tokens=100), eps[0])
    eps[0].outstanding = 1  # 100 uncached tokens queued on w0, nothing on w1
    req = Req(SYSTEM + "tail", prompt_tokens=1000)
    assert policy.choose(req, eps) is eps[0]  # 100 queued + ~50 uncached < 1000 on w1
    policy.backlog.record(eps[0].url, 2000)  # a long prefill arrives on w0 ...
    match.routed(Req("other " * 400, prompt_tokens=2000), eps[0])
    eps[0].outstanding = 2
    assert policy.choose(req, eps) is eps[1]  # ... now ~2150 there > 1000 here
    assert match.choose(req, eps) is eps[0]  # `match` still follows the prefix (2 is not overloaded)


def test_cost_without_any_match_takes_the_least_queued_work_then_turns() -> None:
    eps = endpoints(3)
    policy = cost_policy()
    policy.backlog.record(eps[0].url, 500)
    policy.backlog.record(eps[1].url, 50)
    eps[0].outstanding = eps[1].outstanding = 1
    assert policy.choose(Req("fresh " * 100), eps) is eps[2]
    eps[2].outstanding = 1
    policy.backlog.record(eps[2].url, 50)  # w1 and w2 tie on work and on load: they take turns
    picks = {policy.choose(Req("fresh " * 100), eps).url for _ in range(4)}
    assert picks == {"http://w1", "http://w2"}


def test_cost_guard_makes_an_overloaded_holder_count_as_not_holding() -> None:
    eps = endpoints(2)
    guarded, unguarded = cost_policy(balance_abs_threshold=4), cost_policy(balance_abs_threshold=100)
    for p in (guarded, unguarded):
        p.routed(Req(SYSTEM, prompt_tokens=0), eps[0])  # recorded as 0 tokens of work
    eps[0].outstanding = 5  # 5 above w1's 0: overloaded for the guarded one
    req = Req(SYSTEM + "tail", prompt_tokens=1000)
    assert unguarded.choose(req, eps) is eps[0]
    assert guarded.choose(req, eps) is eps[1]  # 0 + 1000 on both: the less loaded


def test_cost_below_the_match_threshold_counts_as_no_match() -> None:
    eps = endpoints(2)
    policy = cost_policy(match_threshold=0.5, chunk_chars=64)
    shared = "x" * 640  # 10 chunks
    policy.routed(Req(shared, prompt_tokens=0), eps[0])
    eps[0].outstanding = 1  # 0 tokens of work, but more requests than w1
    assert policy.choose(Req(shared + "y" * 1000, prompt_tokens=1000), eps) is eps[1]  # 39%: no match, tie
    assert policy.choose(Req(shared + "y" * 100, prompt_tokens=1000), eps) is eps[0]  # 86%: ~135 < 1000


def test_an_override_records_the_work_it_adds_before_the_view_learns_the_prompt() -> None:
    eps = endpoints(1)
    policy = cost_policy()
    policy.routed(Req(SYSTEM, prompt_tokens=100), eps[0])  # not chosen by the policy; nothing cached: 100
    policy.routed(Req(SYSTEM, prompt_tokens=100), eps[0])  # all but the partial tail chunk cached now
    eps[0].outstanding = 2
    cached = len(SYSTEM) // policy.chunk * policy.chunk  # full chunks only
    assert policy.backlog.of(eps[0]) == pytest.approx(100 + 100 * (1 - cached / len(SYSTEM)))


def test_config_takes_score_cost_and_refuses_other_scores() -> None:
    pool = {"name": "a", "workers": ["http://w"], "policy": {"name": "prefix_aware", "score": "cost"}}
    assert Pool(parse_config({"pools": [pool]}).pools[0]).policies["replica"].by_cost
    with pytest.raises(ConfigError, match="score"):
        parse_config({"pools": [{**pool, "policy": {"name": "prefix_aware", "score": "fastest"}}]})
