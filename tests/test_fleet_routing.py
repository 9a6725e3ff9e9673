"""Coherent prefix routing across gateway processes and replicas, and a prefix view that sizes
itself from the workers' reported caches (issue 26)."""

from __future__ import annotations

import random

import httpx

from gateway.policies import make_policy
from gateway.policies.prefix_match import overloaded
from gateway.pool import Endpoint
from tests.conftest import wait_until
from tests.test_policies import Req, endpoints, send

WORDS = "alpha beta gamma delta river stone cloud forest engine signal vector matrix kernel".split()


def conversations(n: int, turns: int, seed: int = 7) -> list[list[str]]:
    """Each conversation's prompts, turn by turn: its own opening, then user and reply text."""
    rng = random.Random(seed)
    out = []
    for c in range(n):
        text = f"<|system|>conversation {c}. " + " ".join(rng.choices(WORDS, k=60))
        prompts = []
        for _ in range(turns):
            text += "<|user|>" + " ".join(rng.choices(WORDS, k=12))
            prompts.append(text)
            text += "<|assistant|>" + " ".join(rng.choices(WORDS, k=20))
        out.append(prompts)
    return out


def route_alternating(options: dict, replicas: int = 2) -> tuple[dict[int, set[str]], list[Endpoint]]:
    """24 conversations of 5 turns, each turn received by the next of `replicas` independent
    policies (as gateway processes or replicas, each with its own view); the workers each
    conversation's turns went to."""
    eps = endpoints(4)
    policies = [make_policy("prefix_aware", "replica", options) for _ in range(replicas)]
    seen: dict[int, set[str]] = {}
    convs = conversations(24, 5)
    order = list(range(24))
    for turn in range(5):
        random.Random(turn).shuffle(order)  # conversations take their turns in any order
        for c in order:
            prompts = convs[c]
            policy = policies[(c + turn) % replicas]
            chosen = send(policy, Req(prompts[turn], prompt_tokens=len(prompts[turn]) // 4), eps)
            seen.setdefault(c, set()).add(chosen.url)
    return seen, eps


def test_independent_gateways_send_each_conversation_to_one_worker() -> None:
    """Turns alternate between two gateways that share nothing: every conversation still stays
    on one worker (its opening's affinity worker), and the conversations spread over all four."""
    seen, _ = route_alternating({})
    assert all(len(urls) == 1 for urls in seen.values()), seen
    homes = [next(iter(urls)) for urls in seen.values()]
    per_worker = [homes.count(f"http://w{i}") for i in range(4)]
    assert min(per_worker) >= 2 and max(per_worker) <= 12, per_worker  # 6 each on average
    # Four replicas agree as well.
    assert all(len(urls) == 1 for urls in route_alternating({}, replicas=4)[0].values())


def test_without_affinity_the_gateways_disagree() -> None:
    """The same traffic with the old fallback (least loaded): conversations are split, which is
    what the affinity fixes (each gateway's view only knows the turns it routed)."""
    seen, _ = route_alternating({"affinity_chars": 0})
    assert sum(len(urls) > 1 for urls in seen.values()) >= 12


def test_an_overloaded_affinity_worker_passes_new_prompts_to_the_next_one() -> None:
    """Bounded load: the affinity worker is skipped while the guard marks it overloaded, and
    every gateway then picks the same second choice."""
    eps = endpoints(4)
    a, b = (make_policy("prefix_aware", "replica") for _ in range(2))
    prompt = Req("<|system|>a new conversation " * 20)
    home = a.choose(prompt, eps)
    home.outstanding = 12  # others idle: 12 > max(8, mean 3) above the least loaded
    second = a.choose(prompt, eps)
    assert second is not home and b.choose(prompt, eps) is second
    home.outstanding = 8  # within the guard again
    assert b.choose(prompt, eps) is home


def test_the_balance_guard_adapts_to_the_load() -> None:
    """Without a configured threshold a worker is overloaded at more than the mean load (at
    least 8) above the least loaded one, and 1.5 times it: the guard loosens as load grows."""
    assert overloaded([0, 3, 8], None, 1.5) == [False, False, False]  # the floor: 8
    assert overloaded([0, 3, 9], None, 1.5) == [False, False, True]
    assert overloaded([20, 24, 40], None, 1.5) == [False, False, False]  # mean 28: 20 above is within
    assert overloaded([20, 24, 60], None, 1.5) == [False, False, True]  # 40 above the least loaded
    assert overloaded([20, 24, 40], 8, 1.5) == [False, False, True]  # what a fixed 8 would say


def test_the_view_of_each_worker_is_bounded_by_its_reported_cache() -> None:
    """Unsized (the default), an endpoint's view holds what its cache holds: the reported tokens
    x 4 characters per token / 64-character chunks; a worker that reports nothing keeps the old
    bound, and an explicit max_blocks wins over reports."""
    eps = endpoints(2)
    eps[0].cache_tokens = 1600  # 1600 tokens ~ 6400 characters ~ 100 chunks
    policy = make_policy("prefix_aware", "replica")
    long = "".join(f"{i:08d}" for i in range(4000))  # 32000 characters, 500 chunks
    policy.routed(Req(long), eps[0])
    policy.routed(Req(long), eps[1])
    assert policy.view.blocks("http://w0") == 100
    assert policy.view.blocks("http://w1") == 500
    eps[0].cache_tokens = 3200  # a restarted worker with a larger cache
    policy.routed(Req(long[:64] + "x" * 20000), eps[0])
    assert policy.view.limit("http://w0") == 200
    fixed = make_policy("prefix_aware", "replica", {"max_blocks": 50})
    fixed.routed(Req(long), eps[0])
    assert fixed.view.blocks("http://w0") == 50


async def test_two_gateways_keep_each_conversations_cache_on_one_worker(sim, gateway) -> None:
    """End to end: two gateways in front of the same four simulated workers, each conversation's
    turns sent alternately to one and the other, defaults only (the view sizes itself from the
    workers' /metrics). Every turn after the first finds the previous turns in its worker's cache."""
    sims = [await sim(enable_prompt_tokens_details=True, block_size=4) for _ in range(4)]
    pool = [{"name": "p", "workers": [s.url for s in sims], "policy": "prefix_aware"}]
    gws = [await gateway(pool, worker_metrics={"interval_s": 0.05}) for _ in range(2)]
    for gw in gws:
        await wait_until(lambda gw=gw: all(e.healthy and e.cache_tokens for e in gw.gateway.pools[0].endpoints))
    cached: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for c, prompts in enumerate(conversations(8, 4)):
            for turn, prompt in enumerate(prompts):
                url = gws[(c + turn) % 2].url + "/v1/completions"
                r = await client.post(url, json={"model": "sim-model", "prompt": prompt, "max_tokens": 1})
                assert r.status_code == 200, r.text
                if turn:
                    cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
    assert len(cached) == 24 and min(cached) > 60, cached  # the 61-word opening at least, every time
