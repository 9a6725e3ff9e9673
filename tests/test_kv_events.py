"""The KV-event subscriber and precise_prefix's view, against a publisher speaking vLLM's wire format."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.asyncio

from gateway.kv_events import Cleared, Removed, Stored, parse_batch
from gateway.policies import make_policy
from gateway.policies.block_hash import BlockHasher, external
from gateway.pool import Endpoint
from tests.conftest import wait_until

MODEL_DIR = Path(__file__).resolve().parents[1] / ".models" / "tiny-llama"


def batch(*events: dict, seq_ts: float = 1.0) -> bytes:
    """A KVEventBatch as vLLM 0.32 encodes it: [ts, [tagged maps], dp_rank]."""
    return msgspec.msgpack.encode([seq_ts, list(events), 0])


def stored(hashes: list[int], tokens: list[int], parent: int | None = None, size: int = 4) -> dict:
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": size,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
        "extra_keys": [None] * len(hashes),
        "group_idx": 0,
        "kv_cache_spec_kind": "full_attention",
    }


def test_batches_parse_into_events() -> None:
    events = parse_batch(
        batch(
            stored([1, 2], list(range(8))),
            {"type": "BlockRemoved", "block_hashes": [2], "medium": "GPU"},
            {"type": "AllBlocksCleared"},
        )
    )
    assert events == [Stored([1, 2], None, list(range(8)), 4), Removed([2]), Cleared()]


def test_hasher_chains_like_vllm() -> None:
    hasher = BlockHasher("sha256", 4)
    full = hasher.chain(list(range(8)))
    assert hasher.chain(list(range(4, 8)), parent=full[0]) == full[1:]
    assert len(hasher.chain(list(range(7)))) == 1  # a partial block has no hash
    assert all(0 <= external(h) < 2**64 for h in full)


@pytest.mark.skipif(not MODEL_DIR.exists(), reason="tiny model not built")
async def test_precise_view_follows_published_events(gateway) -> None:
    ctx = zmq.asyncio.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        policy_config = {
            "name": "precise_prefix",
            "tokenizer": str(MODEL_DIR),
            "topic": "kv",
            "events": {"http://127.0.0.1:9": f"tcp://127.0.0.1:{port}"},
        }
        gw = await gateway(
            [{"name": "p", "workers": ["http://127.0.0.1:9"], "policy": policy_config}],
            worker_metrics={"enabled": False},
        )
        policy = gw.gateway.pools[0].policies["replica"]
        sub = policy.subscribers["http://127.0.0.1:9"]
        hasher = BlockHasher("sha256", 4)
        tokens = list(range(100, 112))
        hashes = [external(h) for h in hasher.chain(tokens)]
        seq = 0

        async def publish(payload: bytes) -> None:
            nonlocal seq
            await pub.send_multipart([b"kv", seq.to_bytes(8, "big"), payload])
            seq += 1

        while not sub.received:  # a PUB drops what it sends before the subscriber is connected
            await publish(batch())
            await asyncio.sleep(0.02)
        await publish(batch(stored(hashes, tokens)))
        await wait_until(lambda: policy.view.match(hashes, ["http://127.0.0.1:9"]) == [3])
        assert policy.hasher.block_size == 4 and policy.checked == 3 and policy.mismatched == 0
        await publish(batch({"type": "BlockRemoved", "block_hashes": hashes[1:2], "medium": "GPU"}))
        await wait_until(lambda: policy.view.match(hashes, ["http://127.0.0.1:9"]) == [1])
        await publish(batch({"type": "AllBlocksCleared"}))
        await wait_until(lambda: policy.view.blocks("http://127.0.0.1:9") == 0)
        assert sub.gaps == 0
    finally:
        pub.close(0)


@pytest.mark.skipif(not MODEL_DIR.exists(), reason="tiny model not built")
async def test_precise_follows_endpoints_added_after_start_and_stops_for_removed_ones() -> None:
    ctx = zmq.asyncio.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    late = "http://127.0.0.1:10"
    options = {"tokenizer": str(MODEL_DIR), "topic": "kv", "events": {late: f"tcp://127.0.0.1:{port}"}}
    policy = make_policy("precise_prefix", "replica", options)
    policy.rescan_s = 0.01
    group: list[Endpoint] = []  # the pool's live list, which discovery grows
    follow = asyncio.create_task(policy.background(group)[0])
    try:
        await asyncio.sleep(0.05)  # running with an empty group
        assert policy.subscribers == {}
        ep = Endpoint(late, "replica", "p")
        group.append(ep)  # discovered after start
        await wait_until(lambda: late in policy.subscribers)
        sub, task = policy.subscribers[late], policy._tasks[late]
        while not sub.received:  # a PUB drops what it sends before the subscriber is connected
            await pub.send_multipart([b"kv", (0).to_bytes(8, "big"), batch()])
            await asyncio.sleep(0.02)
        hasher = BlockHasher("sha256", 4)
        tokens = list(range(200, 208))
        hashes = [external(h) for h in hasher.chain(tokens)]
        await pub.send_multipart([b"kv", (1).to_bytes(8, "big"), batch(stored(hashes, tokens))])
        await wait_until(lambda: policy.view.match(hashes, [late]) == [2])
        group.remove(ep)  # discovery drained it; the pool calls forget
        policy.forget(ep)
        await wait_until(task.done)
        assert late not in policy.subscribers and policy.view.blocks(late) == 0
        await asyncio.sleep(0.05)  # later rescans do not subscribe again
        assert late not in policy._tasks
    finally:
        follow.cancel()
        pub.close(0)


@pytest.mark.skipif(not MODEL_DIR.exists(), reason="tiny model not built")
def test_precise_view_is_bounded_and_forgets_a_worker_whose_events_were_lost_or_restarted() -> None:
    url = "http://127.0.0.1:9"
    policy = make_policy("precise_prefix", "replica", {"tokenizer": str(MODEL_DIR), "max_blocks": 100})
    sub = policy._subscriber(url)
    hasher = BlockHasher("sha256", 4)

    def publish(seq: int, first_token: int, blocks: int) -> list[int]:
        tokens = list(range(first_token, first_token + 4 * blocks))
        hashes = [external(h) for h in hasher.chain(tokens)]
        sub.handle([b"", seq.to_bytes(8, "big"), batch(stored(hashes, tokens))])
        return hashes

    for seq in range(10):  # 500 blocks stored, no eviction heard of: the view keeps the newest 100
        last = publish(seq, 1000 * seq, 50)
    assert policy.view.blocks(url) == 100
    assert policy.view.match(last, [url]) == [50]
    after_gap = publish(12, 20_000, 3)  # batches 10 and 11 were lost: the view restarts from this one
    assert sub.gaps == 2 and policy.view.blocks(url) == 3
    assert policy.view.match(last, [url]) == [0] and policy.view.match(after_gap, [url]) == [3]
    publish(0, 30_000, 2)  # the worker restarted (its sequence began again): its old cache is gone
    assert sub.restarts == 1 and policy.view.blocks(url) == 2
    assert policy.view.match(after_gap, [url]) == [0]
