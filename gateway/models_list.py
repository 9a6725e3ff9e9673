"""`GET /v1/models`: the workers' own model objects, merged across endpoints and pools.

A worker's entry passes with every field vLLM gives it (`created`, `owned_by`, `root`,
`parent`, `max_model_len`, `permission`); a LoRA adapter a worker loaded is listed with its
`parent`. A configured name no worker reports yet, an alias and a split get an entry made by
the gateway, which carries what the OpenAI schema requires (`id`, `object`, `created`,
`owned_by`) and, for an alias, its target's `root` and `max_model_len`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import Split
from .pool import Pool

OWNER = "pd-gateway"


def made_card(model_id: str, created: int, like: dict | None = None) -> dict:
    card = {"id": model_id, "object": "model", "created": created, "owned_by": OWNER, "root": model_id, "parent": None}
    if like is not None:
        card["root"] = like.get("root", like["id"])
        if "max_model_len" in like:
            card["max_model_len"] = like["max_model_len"]
    return card


def _pool_cards(pool: Pool, created: int) -> list[dict]:
    reported: dict[str, dict] = {}
    for ep in pool.endpoints:
        if ep.healthy:
            for card in ep.models:
                reported.setdefault(card["id"], card)
    cards = [reported.get(name) or made_card(name, created) for name in pool.config.models]
    named = set(pool.config.models)
    return cards + [c for c in reported.values() if c["id"] not in named]


def model_cards(pools: Sequence[Pool], aliases: dict[str, str | Split], created: int) -> list[dict]:
    """Every model the gateway serves, once each (the first pool that serves a name wins)."""
    seen: dict[str, dict] = {}
    for pool in pools:
        for card in _pool_cards(pool, created):
            seen.setdefault(card["id"], card)
    for public, target in aliases.items():
        like = seen.get(target) if isinstance(target, str) else None
        seen.setdefault(public, made_card(public, created, like))
    return list(seen.values())
