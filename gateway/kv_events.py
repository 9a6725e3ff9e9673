"""Subscribing to a vLLM worker's KV-cache events (`--kv-events-config`).

vLLM (0.32) publishes on a ZMQ PUB socket (default `tcp://*:5557`) three-part messages:
topic, an 8-byte big-endian sequence number, and a msgpack `KVEventBatch`
`[ts, events, data_parallel_rank]`. Each event is a msgpack map tagged by `type`:

- `BlockStored`: `block_hashes` (one per full block, chained), `parent_block_hash` (the block
  before the first, or None), `token_ids` (the blocks' tokens), `block_size`, ...;
- `BlockRemoved`: `block_hashes` evicted;
- `AllBlocksCleared`: the whole prefix cache was reset.

Hashes are 64-bit ints by default (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1: the low 64 bits
of the engine's SHA-256 block hash), else the hash bytes. A subscriber that connects late
or drops messages misses events; the sequence numbers let it notice (`gaps`), and a number
that goes back says the worker restarted: either way `on_reset` is called, as the view of
the worker's cache can no longer be trusted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
import zmq.asyncio

log = logging.getLogger("pd_gateway.kv_events")

BlockHash = int | bytes


@dataclass
class Stored:
    hashes: list[BlockHash]
    parent: BlockHash | None
    token_ids: list[int]
    block_size: int


@dataclass
class Removed:
    hashes: list[BlockHash]


@dataclass
class Cleared:
    pass


Event = Stored | Removed | Cleared


def _field(event: Any, name: str, index: int) -> Any:
    return event.get(name) if isinstance(event, dict) else event[index]


def parse_event(raw: Any) -> Event | None:
    """One event of a batch (a tagged map; an array `[tag, fields...]` is read too)."""
    tag = raw.get("type") if isinstance(raw, dict) else raw[0]
    if tag == "BlockStored":
        return Stored(
            list(_field(raw, "block_hashes", 1)),
            _field(raw, "parent_block_hash", 2),
            list(_field(raw, "token_ids", 3)),
            int(_field(raw, "block_size", 4)),
        )
    if tag == "BlockRemoved":
        return Removed(list(_field(raw, "block_hashes", 1)))
    if tag == "AllBlocksCleared":
        return Cleared()
    return None


def parse_batch(payload: bytes) -> list[Event]:
    batch = msgspec.msgpack.decode(payload)
    events = batch[1] if isinstance(batch, list) else batch.get("events", [])
    return [e for e in (parse_event(raw) for raw in events) if e is not None]


@dataclass
class Subscriber:
    """Receives one worker's events and hands each batch to `on_events`."""

    endpoint: str  # e.g. tcp://10.0.0.5:5557
    on_events: Callable[[list[Event]], None]
    topic: str = ""
    received: int = 0  # batches
    gaps: int = 0  # sequence numbers skipped (events lost: the view may be stale)
    restarts: int = 0  # sequence numbers that went back (the publisher started again)
    on_reset: Callable[[], None] | None = None  # called on a gap or a restart, before the batch
    _last_seq: int | None = field(default=None, repr=False)
    connected: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def run(self) -> None:
        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        sock.connect(self.endpoint)
        self.connected.set()
        try:
            while True:
                self.handle(await sock.recv_multipart())
        finally:
            sock.close()

    def handle(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            log.warning("kv events from %s: %d frames, expected 3", self.endpoint, len(frames))
            return
        _, seq_bytes, payload = frames
        seq, last = int.from_bytes(seq_bytes, "big"), self._last_seq
        self._last_seq = seq
        if last is not None and seq != last + 1:
            if seq > last:
                self.gaps += seq - last - 1
                log.warning("kv events from %s: %d batches lost", self.endpoint, seq - last - 1)
            else:
                self.restarts += 1
                log.info("kv events from %s: sequence restarted (%d after %d)", self.endpoint, seq, last)
            if self.on_reset is not None:
                self.on_reset()
        try:
            events = parse_batch(payload)
        except (msgspec.DecodeError, IndexError, TypeError, ValueError) as err:
            log.warning("kv events from %s: unreadable batch: %s", self.endpoint, err)
            return
        self.received += 1
        self.on_events(events)
