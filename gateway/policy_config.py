"""The routing policies' config: one model per policy name, told apart by `name`.

`policy: prefix_aware` is short for `{name: prefix_aware}`; each policy's options are the
other fields of its model, passed to its constructor (gateway.policies.make_policy).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def options(self) -> dict:
        return self.model_dump(exclude={"name"})


class LeastOutstandingConfig(_Policy):
    name: Literal["least_outstanding"] = "least_outstanding"


class SessionConfig(_Policy):
    name: Literal["session"]
    balance_abs_threshold: int = Field(8, ge=0)  # as prefix_aware's guard: an overloaded worker's
    balance_rel_threshold: float = Field(1.5, ge=1)  # keys go to their next worker meanwhile


class PrefixAwareConfig(_Policy):
    name: Literal["prefix_aware"]
    chunk_chars: int = Field(64, ge=1)  # prompt text per tree node (~16 tokens)
    # chunks remembered per endpoint (LRU beyond); None: its reported KV cache (vllm:cache_config_info)
    max_blocks: int | None = Field(None, ge=1)
    chars_per_token: float = Field(4.0, gt=0)  # converts a reported cache size into chunks
    match_threshold: float = Field(0.5, ge=0, le=1)  # matched fraction of the prompt to follow the cache
    # requests above the least loaded (None: the mean load per endpoint, at least 8) ...
    balance_abs_threshold: int | None = Field(None, ge=0)
    balance_rel_threshold: float = Field(1.5, ge=1)  # ... and times its load: then the cache is not followed
    # match: the deepest match wins; cost: the least queued + uncached prefill tokens (prefix_match.py)
    score: Literal["match", "cost"] = "match"
    # a prompt no endpoint holds goes by rendezvous hash of its first characters (0: least loaded)
    affinity_chars: int = Field(256, ge=0)
    # which endpoints the affinity may pick: None, those the guard allows; k, within k of the least loaded
    affinity_slack: int | None = Field(None, ge=0)


class PrecisePrefixConfig(_Policy):
    name: Literal["precise_prefix"]
    tokenizer: str  # the served model's tokenizer (a path or hub name), as the workers load it
    block_size: int | None = Field(None, ge=1)  # the workers' KV block size (None: from their events)
    hash_algo: Literal["sha256", "sha256_cbor"] = "sha256"  # the workers' --prefix-caching-hash-algo
    hash_seed: str | None = None  # the workers' PYTHONHASHSEED, if set
    events_port: int = Field(5557, ge=1, le=65535)  # each worker's --kv-events-config endpoint port
    events: dict[str, str] = {}  # worker URL -> ZMQ endpoint, where not at the worker's host:events_port
    topic: str = ""
    # Blocks believed held per worker (LRU beyond): lost eviction events cannot grow the view for ever
    max_blocks: int = Field(262144, ge=1)
    match_threshold: float = Field(0.1, ge=0, le=1)
    balance_abs_threshold: int = Field(8, ge=0)
    balance_rel_threshold: float = Field(1.5, ge=1)
    score: Literal["match", "cost"] = "match"


def _from_name(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


PolicyConfig = Annotated[
    LeastOutstandingConfig | SessionConfig | PrefixAwareConfig | PrecisePrefixConfig,
    Field(discriminator="name"),
    BeforeValidator(_from_name),
]
