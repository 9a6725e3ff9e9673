"""workers/warmup.py against simulated NIXL workers: the P->D transfers that `pd-gateway up`
runs before it reports serving."""

from __future__ import annotations

from workers.launch import free_port
from workers.plan import WorkerSpec
from workers.warmup import PairResult, WarmupError, WarmupPolicy, pd_pairs, transfer, warm_up

MODEL = "sim-model"
NEVER_FAST = 0.0  # no transfer takes 0 s: every pair does max_rounds
ALWAYS_FAST = 1e9


def spec(pool: str, role: str, port: int) -> WorkerSpec:
    url = f"http://127.0.0.1:{port}"
    return WorkerSpec(f"{pool}-{role}-{port}", pool, role, MODEL, "local", port, None, [], {}, url)


def test_pd_pairs_are_every_prefill_with_every_decode_of_nixl_pools_only() -> None:
    workers = [spec("a", "prefill", 1), spec("a", "prefill", 2), spec("a", "decode", 3), spec("a", "decode", 4)]
    workers += [spec("b", "prefill", 5), spec("b", "decode", 6), spec("dp", "replica", 7)]
    pairs = pd_pairs(workers, ["a"])
    assert sorted((p[-1], d[-1]) for p, d, _ in pairs) == [("1", "3"), ("1", "4"), ("2", "3"), ("2", "4")]
    assert {m for _, _, m in pairs} == {MODEL}
    assert pd_pairs(workers, []) == []


async def test_a_transfer_goes_through_the_prefill_to_the_decode(sim) -> None:
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl")
    answer = await transfer(p.url, d.url, MODEL, "hello there", timeout_s=10)
    assert answer["usage"]["completion_tokens"] == 2
    assert p.stats.kv_sent == 1 and d.stats.kv_received == 1
    assert p.stats.last_request_body["kv_transfer_params"] == {"do_remote_decode": True}
    assert p.stats.last_request_body["max_tokens"] == 1


async def test_every_pair_is_warmed_until_a_transfer_is_fast_after_min_rounds(sim) -> None:
    p1, p2 = await sim(role="prefill", kv_protocol="nixl"), await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl")
    lines: list[str] = []
    pairs = [(p1.url, d.url, MODEL), (p2.url, d.url, MODEL)]
    results = await warm_up(pairs, WarmupPolicy(min_rounds=3, max_rounds=5, fast_s=ALWAYS_FAST), lines.append)
    assert [len(r.seconds) for r in results] == [3, 3] and all(r.warm for r in results)
    assert p1.stats.kv_sent == 3 and p2.stats.kv_sent == 3 and d.stats.kv_received == 6
    assert len(lines) == 6 and all("took" in line for line in lines)
    assert "warm (transfers: " in results[0].summary()


async def test_a_pair_that_never_gets_fast_stops_after_max_rounds(sim) -> None:
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl")
    [result] = await warm_up([(p.url, d.url, MODEL)], WarmupPolicy(min_rounds=1, max_rounds=4, fast_s=NEVER_FAST))
    assert len(result.seconds) == 4 and result.warm and d.stats.kv_received == 4


async def test_a_failing_pair_is_reported_and_the_others_are_still_warmed(sim) -> None:
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl")
    dead = f"http://127.0.0.1:{free_port()}"
    lines: list[str] = []
    policy = WarmupPolicy(min_rounds=1, fast_s=ALWAYS_FAST, timeout_s=5)
    bad, good = await warm_up([(dead, d.url, MODEL), (p.url, d.url, MODEL)], policy, lines.append)
    assert isinstance(bad, PairResult) and not bad.warm and bad.error and dead in bad.error
    assert "failed: " in bad.summary() and any(dead in line for line in lines)
    assert good.warm and d.stats.kv_received == 1


async def test_a_prefill_that_is_not_nixl_is_an_error_and_the_decode_is_not_asked(sim) -> None:
    legacy = await sim(role="prefill", kv_protocol="neuron-legacy")  # refuses kv_transfer_params: 400
    d = await sim(role="decode", kv_protocol="nixl")
    try:
        await transfer(legacy.url, d.url, MODEL, "hi", timeout_s=5)
    except WarmupError as err:
        assert "HTTP 400" in str(err) and "kv_transfer_params" in str(err)
    else:
        raise AssertionError("expected WarmupError")
    assert d.stats.requests_total == 0
