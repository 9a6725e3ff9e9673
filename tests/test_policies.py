"""Routing policies as pure functions of (request, endpoint states)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.config import ConfigError, parse_config
from gateway.policies import make_policy
from gateway.policies.chunk_tree import ChunkTree, chain_hashes
from gateway.policies.session import rendezvous
from gateway.pool import Endpoint, Pool


@dataclass
class Req:
    prefix_text: str = ""
    session_key: str | None = None
    model: str = "m"
    route: str = "completions"
    prompt_tokens: int = 100


def endpoints(n: int, role: str = "replica") -> list[Endpoint]:
    return [Endpoint(f"http://w{i}", role, "p") for i in range(n)]  # type: ignore[arg-type]


def send(policy, req: Req, eps: list[Endpoint]) -> Endpoint:
    chosen = policy.choose(req, eps)
    policy.routed(req, chosen)
    return chosen


SYSTEM = "You are a careful assistant. " * 40  # ~1100 characters


# least_outstanding ---------------------------------------------------------------------


def test_least_outstanding_takes_turns_among_ties_and_counts_worker_reports() -> None:
    eps = endpoints(3)
    policy = make_policy("least_outstanding", "replica")
    assert [policy.choose(Req(), eps).url for _ in range(3)] == ["http://w0", "http://w1", "http://w2"]
    eps[0].foreign = 5  # another gateway's requests, seen in w0's /metrics
    eps[1].outstanding = 1
    assert policy.choose(Req(), eps) is eps[2]


def test_prefill_load_counts_tokens_and_foreign_requests_at_the_mean_prompt() -> None:
    eps = endpoints(2, "prefill")
    policy = make_policy("least_outstanding", "prefill")
    eps[0].outstanding_tokens = 300
    eps[1].foreign = 2  # at the initial mean of 256 tokens each: 512 > 300
    assert policy.choose(Req(), eps) is eps[0]


# prefix_aware ----------------------------------------------------------------------------


def test_prefix_aware_follows_the_prefix_and_new_prefixes_go_least_loaded() -> None:
    eps = endpoints(4)
    policy = make_policy("prefix_aware", "replica")
    first = send(policy, Req(SYSTEM + "question one"), eps)
    first.outstanding += 1
    assert send(policy, Req(SYSTEM + "question two"), eps) is first
    other = send(policy, Req("Completely different text. " * 40), eps)
    assert other is not first


@pytest.mark.parametrize("score", ["match", "cost"])
def test_choices_recorded_a_turn_later_record_each_requests_own_prompt(score: str) -> None:
    """The balancer runs `routed` a loop turn after `choose`: a second request may choose in
    between, and each prompt must still be learnt for its own endpoint, hashed once."""
    eps = endpoints(2)
    policy = make_policy("prefix_aware", "replica", {"score": score, "affinity_chars": 0})  # fresh: least loaded
    hashed: list[str] = []
    names = policy.names
    policy.names = lambda req: hashed.append(req.prefix_text) or names(req)  # type: ignore[method-assign]
    a, b = Req("a" * 400), Req("b" * 400)
    at_a = policy.choose(a, eps)
    eps[eps.index(at_a)].outstanding = 1
    at_b = policy.choose(b, eps)
    assert at_a is not at_b
    policy.routed(a, at_a)
    policy.routed(b, at_b)
    assert hashed == [a.prefix_text, b.prefix_text, a.prefix_text]  # b's names still cached for b
    for req, chosen, other in ((a, at_a, at_b), (b, at_b, at_a)):
        chain = names(req)
        assert policy.view.match(chain, [chosen.url, other.url]) == [len(chain), 0]


def test_prefix_aware_ties_on_match_go_to_the_least_loaded_holder() -> None:
    eps = endpoints(3)
    policy = make_policy("prefix_aware", "replica")
    for e in eps[:2]:
        policy.routed(Req(SYSTEM), e)
    eps[0].outstanding = 2
    eps[2].outstanding = 0  # least loaded, but does not hold the prefix
    eps[1].outstanding = 1
    assert policy.choose(Req(SYSTEM + "tail"), eps) is eps[1]


def test_below_the_match_threshold_the_least_loaded_wins() -> None:
    eps = endpoints(2)
    policy = make_policy("prefix_aware", "replica", {"match_threshold": 0.5, "chunk_chars": 64})
    shared = "x" * 640  # 10 chunks
    policy.routed(Req(shared), eps[0])
    eps[0].outstanding = 1
    assert policy.choose(Req(shared + "y" * 1000), eps) is eps[1]  # 640 / 1640 < 0.5
    assert policy.choose(Req(shared + "y" * 100), eps) is eps[0]  # 640 / 740 >= 0.5


def test_balance_guard_moves_a_hot_prefix_off_an_overloaded_worker() -> None:
    eps = endpoints(2)
    policy = make_policy("prefix_aware", "replica", {"balance_abs_threshold": 4, "balance_rel_threshold": 1.5})
    policy.routed(Req(SYSTEM), eps[0])
    eps[0].outstanding, eps[1].outstanding = 4, 0  # 4 above: not more than abs 4
    assert policy.choose(Req(SYSTEM + "a"), eps) is eps[0]
    eps[0].outstanding = 5  # 5 above and 5 > 0 * 1.5
    assert policy.choose(Req(SYSTEM + "a"), eps) is eps[1]
    eps[0].outstanding, eps[1].outstanding = 15, 10  # 5 above, but 15 > 1.5 * 10 is false
    assert policy.choose(Req(SYSTEM + "a"), eps) is eps[0]


def test_guard_falls_back_to_the_next_deepest_match() -> None:
    eps = endpoints(3)
    policy = make_policy("prefix_aware", "replica", {"balance_abs_threshold": 2})
    policy.routed(Req(SYSTEM + "z" * 640), eps[0])  # deepest
    policy.routed(Req(SYSTEM), eps[1])  # shorter match
    eps[0].outstanding = 10
    eps[2].outstanding = 0
    eps[1].outstanding = 1
    assert policy.choose(Req(SYSTEM + "z" * 640 + "q"), eps) is eps[1]


def test_forget_drops_an_endpoints_prefixes() -> None:
    eps = endpoints(2)
    policy = make_policy("prefix_aware", "replica")
    policy.routed(Req(SYSTEM), eps[0])
    eps[0].outstanding = 1
    assert policy.choose(Req(SYSTEM), eps) is eps[0]
    policy.forget(eps[0])
    assert policy.choose(Req(SYSTEM), eps) is eps[1]


def test_chain_hashes_name_whole_prefixes() -> None:
    a, b = chain_hashes("ab" * 64, 16), chain_hashes("ab" * 32 + "ba" * 32, 16)
    assert len(a) == 8
    assert a[:4] == b[:4] and a[4] != b[4]
    assert chain_hashes("short", 16) == []


def test_tree_memory_is_bounded_and_evicts_tips_before_stems() -> None:
    tree = ChunkTree(max_blocks=4)
    old = chain_hashes("a" * 48, 16)  # 3 chunks
    new = chain_hashes("b" * 48, 16)
    tree.insert("w", old)
    tree.insert("w", new)
    assert tree.blocks("w") == 4
    assert len(tree.owners) == 4
    # the older prompt lost its last two chunks, not its first: its prefix still matches 1 deep
    assert tree.match(old, ["w"]) == [1]
    assert tree.match(new, ["w"]) == [3]


def test_eviction_by_one_endpoint_keeps_the_names_another_holds() -> None:
    tree = ChunkTree(max_blocks=2)
    shared, other = chain_hashes("s" * 32, 16), chain_hashes("o" * 32, 16)
    tree.insert("a", shared)
    tree.insert("b", shared)
    tree.insert("a", other)  # a evicts both shared names; b still holds them
    assert tree.match(shared, ["a", "b"]) == [0, 2]
    assert set(tree.owners) == set(shared) | set(other)
    tree.insert("b", other)
    assert set(tree.owners) == set(other)  # nobody holds `shared` any more: gone from the dict


def test_tree_match_depth_per_endpoint() -> None:
    tree = ChunkTree(max_blocks=100)
    hashes = chain_hashes("c" * 160, 16)
    tree.insert("a", hashes[:3])
    tree.insert("b", hashes)
    assert tree.match(hashes, ["a", "b", "c"]) == [3, 10, 0]
    tree.remove("b", hashes[5:6])
    assert tree.match(hashes, ["a", "b"]) == [3, 5]
    tree.forget("b")
    assert tree.match(hashes, ["a", "b"]) == [3, 0]
    assert set(tree.owners) == set(hashes[:3])


# session ---------------------------------------------------------------------------------


def test_session_is_sticky_and_keyless_requests_balance() -> None:
    eps = endpoints(4)
    policy = make_policy("session", "replica")
    home = policy.choose(Req(session_key="alice"), eps)
    home.outstanding = 8  # busier than the rest, within the balance guard: still sticky
    assert all(policy.choose(Req(session_key="alice"), eps) is home for _ in range(5))
    assert policy.choose(Req(), eps) is not home


def test_session_stickiness_yields_to_the_balance_guard() -> None:
    eps = endpoints(4)
    policy = make_policy("session", "replica")
    home = policy.choose(Req(session_key="alice"), eps)
    second = rendezvous("alice", [e for e in eps if e is not home])
    home.outstanding = 50  # overloaded: over the least loaded by more than 8 and 1.5 times
    assert all(policy.choose(Req(session_key="alice"), eps) is second for _ in range(5))
    home.outstanding = 2
    assert policy.choose(Req(session_key="alice"), eps) is home  # back once the load evens out
    tight = make_policy("session", "replica", {"balance_abs_threshold": 1, "balance_rel_threshold": 1.0})
    assert tight.choose(Req(session_key="alice"), eps) is second


def test_rendezvous_moves_only_the_removed_or_added_workers_sessions() -> None:
    eps = endpoints(5)
    keys = [f"user-{i}" for i in range(400)]
    before = {k: rendezvous(k, eps) for k in keys}
    assert len(set(before.values())) == 5
    after = {k: rendezvous(k, eps[:4]) for k in keys}  # w4 removed
    moved = [k for k in keys if before[k] is not after[k]]
    assert moved and all(before[k] is eps[4] for k in moved)
    grown = endpoints(6)
    added = {k: rendezvous(k, grown) for k in keys}  # w5 added
    changed = [k for k in keys if added[k].url != before[k].url]
    assert changed and all(added[k].url == "http://w5" for k in changed)


# config ----------------------------------------------------------------------------------


def test_config_picks_a_policy_per_pd_role_with_its_options() -> None:
    config = parse_config(
        {
            "pools": [
                {
                    "name": "pd",
                    "kind": "pd",
                    "disaggregate_min_tokens": 0,
                    "protocol": "nixl",
                    "prefill": ["http://p"],
                    "decode": ["http://d"],
                    "prefill_policy": {"name": "prefix_aware", "match_threshold": 0.25},
                    "decode_policy": "least_outstanding",
                }
            ]
        }
    )
    pool = Pool(config.pools[0])
    assert pool.policies["prefill"].name == "prefix_aware"
    assert pool.policies["prefill"].threshold == 0.25
    assert pool.policies["prefill"].load == "outstanding_tokens"
    assert pool.policies["decode"].name == "least_outstanding"


@pytest.mark.parametrize("policy", [{"name": "session", "chunk_chars": 3}, "no_such_policy"])
def test_config_refuses_unknown_policies_and_options(policy: object) -> None:
    with pytest.raises(ConfigError, match="policy"):
        parse_config({"pools": [{"name": "a", "workers": ["http://w"], "policy": policy}]})
