"""Deterministic fake model: tokens, prompt rendering, KV store and stats.

Token k of choice i for a prompt text is `" " + VOCAB[h % len(VOCAB)]` where
h = blake2b(blake2b(f"{i}\\0{prompt}") || k).  The prompt is hashed once per
choice (the seed) so per-token cost does not grow with prompt length.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

VOCAB: tuple[str, ...] = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "indigo",
    "violet",
    "north",
    "south",
    "east",
    "west",
    "river",
    "stone",
    "cloud",
    "rain",
    "snow",
    "wind",
    "fire",
    "earth",
    "water",
    "light",
    "shadow",
    "apple",
    "pear",
    "plum",
    "grape",
    "lemon",
    "cherry",
    "melon",
    "peach",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
)
# json.dumps(" " + word) for every word, reused by the streaming fast path.
VOCAB_JSON: tuple[bytes, ...] = tuple(json.dumps(" " + w).encode() for w in VOCAB)
BLOCK_SIZE = 16
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vllm:request_success labels


_VOCAB_IDS = {w: i for i, w in enumerate(VOCAB)}


def word_id(word: str) -> int:
    """A word's token id: its VOCAB index, else an id above the vocabulary that spells the word
    (reversible: a token-id prompt reads back as the words it was made of)."""
    vocab = _VOCAB_IDS.get(word)
    return vocab if vocab is not None else len(VOCAB) + int.from_bytes(b"\x01" + word.encode(), "big")


def id_word(token: int) -> str:
    """The word of a token id (word_id's inverse; an id no word has reads as `<id>`)."""
    if token < len(VOCAB):
        return VOCAB[token]
    raw = (token - len(VOCAB)).to_bytes((token - len(VOCAB)).bit_length() // 8 + 1, "big").lstrip(b"\x00")
    try:
        if raw[:1] == b"\x01" and len(raw) > 1:
            return raw[1:].decode()
    except UnicodeDecodeError:
        pass
    return f"<{token}>"


def prompt_token_ids(prompt: str) -> list[int]:
    """The prompt as token ids, one per word (count_tokens), as `return_token_ids` reports them."""
    return [word_id(w) for w in prompt.split()]


def choice_seed(prompt: str, choice: int) -> tuple[bytes, int]:
    """(seed, offset) of what a choice generates after `prompt`: token k is token offset + k of
    the generation that the prompt's words before its trailing generated words (VOCAB words)
    start. So a prompt that is an earlier prompt plus the text (or token ids) generated for it
    continues that generation exactly, as a model's greedy decoding does."""
    words = prompt.split()
    base = len(words)
    while base and words[base - 1] in _VOCAB_IDS:
        base -= 1
    text = " ".join(words[:base]) if base < len(words) else " ".join(words)
    return hashlib.blake2b(f"{choice}\0{text}".encode(), digest_size=16).digest(), len(words) - base


def token_id(seed: bytes, k: int) -> int:
    digest = hashlib.blake2b(seed + k.to_bytes(4, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % len(VOCAB)


def token_text(prompt: str, choice: int, k: int) -> str:
    seed, offset = choice_seed(prompt, choice)
    return " " + VOCAB[token_id(seed, offset + k)]


def completion_text(prompt: str, choice: int, num_tokens: int) -> str:
    """The full text a worker generates for `num_tokens` tokens (public: tests use it)."""
    seed, offset = choice_seed(prompt, choice)
    return "".join(" " + VOCAB[token_id(seed, offset + k)] for k in range(num_tokens))


def count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def render_chat(messages: list[dict[str, Any]]) -> str:
    """Stand-in for a chat template: one `role: content` line per message."""
    return "\n".join(f"{m.get('role')}: {content_text(m.get('content'))}" for m in messages)


def with_reply(prompt: str, reply: str, chat: bool = True) -> str:
    """`prompt` followed by the reply generated for it, as the next request re-sends them (a chat:
    rendered as render_chat renders an assistant message)."""
    return f"{prompt}\n{render_chat([{'role': 'assistant', 'content': reply}])}" if chat else prompt + reply


def block_ids(prompt_tokens: int, start: int) -> list[int]:
    return list(range(start, start + (prompt_tokens + BLOCK_SIZE - 1) // BLOCK_SIZE))


@dataclass
class KVEntry:
    """What a prefill hands to a decode: the prompt(s) and the first token per choice."""

    key: str
    engine_id: str
    prompts: list[str]
    first_tokens: list[str]
    prompt_tokens: int
    block_ids: list[int]

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.key,
            "engine_id": self.engine_id,
            "prompts": self.prompts,
            "first_tokens": self.first_tokens,
            "prompt_tokens": self.prompt_tokens,
            "block_ids": self.block_ids,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KVEntry:
        return cls(
            key=str(d["request_id"]),
            engine_id=str(d["engine_id"]),
            prompts=[str(p) for p in d["prompts"]],
            first_tokens=[str(t) for t in d["first_tokens"]],
            prompt_tokens=int(d["prompt_tokens"]),
            block_ids=[int(b) for b in d["block_ids"]],
        )


class KVStore:
    """KV held by a prefill worker (its lease) until a decode takes it (once), a decode's
    notification frees it unread (`discard`), or it expires after `hold_s` (NixlConnector's
    kv_lease_duration)."""

    def __init__(self, hold_s: float, stats: SimStats) -> None:
        self._hold_s = hold_s
        self._stats = stats
        self._entries: dict[str, tuple[KVEntry, asyncio.TimerHandle]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def held_tokens(self) -> list[int]:
        """The prompt tokens of each entry held (for the KV-cache usage gauge)."""
        return [entry.prompt_tokens for entry, _ in self._entries.values()]

    def put(self, entry: KVEntry) -> None:
        old = self._entries.pop(entry.key, None)
        if old:
            old[1].cancel()
        handle = asyncio.get_running_loop().call_later(self._hold_s, self._expire, entry.key)
        self._entries[entry.key] = (entry, handle)
        # Wake long-pollers; the first to run takes it.  The entry stays stored until
        # then, so a waiter cancelled in between (peer gone) cannot lose the KV.
        for fut in self._waiters.pop(entry.key, []):
            if not fut.done():
                fut.set_result(None)

    def _expire(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._stats.kv_expired += 1

    def discard(self, key: str) -> bool:
        """Free an entry no decode will read (the decode's notification without a read)."""
        if self.take(key) is None:
            return False
        self._stats.kv_released += 1
        return True

    def take(self, key: str) -> KVEntry | None:
        item = self._entries.pop(key, None)
        if item is None:
            return None
        item[1].cancel()
        return item[0]

    async def wait_take(self, key: str, timeout_s: float) -> KVEntry | None:
        """Long-poll variant of take(): waits up to timeout_s for the KV to be put."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (entry := self.take(key)) is None and (left := deadline - loop.time()) > 0:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(key, []).append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(key)
                if waiters and fut in waiters:
                    waiters.remove(fut)
                    if not waiters:
                        del self._waiters[key]
        return entry

    def clear(self) -> None:
        for _, handle in self._entries.values():
            handle.cancel()
        self._entries.clear()


RECENT_IDS = 1024


@dataclass
class SimStats:
    requests_total: int = 0
    in_flight: int = 0
    completed: int = 0
    cancelled: int = 0
    aborted: int = 0  # connections killed on purpose by --fail-after-tokens
    errors: int = 0
    # The last RECENT_IDS requests' X-Request-Id (tests read them): a long-lived sim keeps no more.
    request_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    kv_sent: int = 0
    kv_received: int = 0
    kv_pull_failed: int = 0
    kv_wait_timeouts: int = 0
    kv_expired: int = 0
    kv_released: int = 0  # held KV freed unread by a decode's notification
    local_prefill_tokens: int = 0  # computed here (cache misses)
    local_cache_hit_tokens: int = 0  # found in this worker's prefix cache
    kv_blocks_in_use: int = 0  # KV blocks of the requests in flight (vllm:kv_cache_usage_perc)
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    external_prefill_tokens: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    last_request_body: Any = None
    last_request_headers: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def reset(self) -> None:
        """Zero everything but in_flight (live requests still finish and decrement it)."""
        fresh = SimStats(in_flight=self.in_flight, kv_blocks_in_use=self.kv_blocks_in_use)
        self.__dict__.update(fresh.__dict__)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, finished=dict(self.finished), request_ids=list(self.request_ids))
