"""Selective disaggregation: a request goes through the prefill leg only when the prompt tokens
its decode would not find cached exceed the pool's `disaggregate_min_tokens`.

Below it, a KV transfer costs more than it saves: the prefill leg's round trip, the hand-off
and the NIXL read against a short prefill computed where the tokens are generated
(docs/configuration.md has the measurement behind the default). The estimate is the prompt's
length (`ApiRequest.prompt_tokens`) less what the decode role's prefix view (`prefix_aware`,
`precise_prefix`) believes the best-matching routable decode holds, which is where those
policies send it unless their balance guard says otherwise; without a view, the prompt's length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..policies.prefix_match import PrefixPolicy

if TYPE_CHECKING:
    from ..pool import Pool
    from ..requests import ApiRequest


def uncached_tokens(pool: Pool, req: ApiRequest) -> float:
    """The prompt tokens of `req` the pool's best decode does not hold (an estimate)."""
    policy = pool.policies.get("decode")
    if not isinstance(policy, PrefixPolicy):
        return float(req.prompt_tokens)
    urls = [e.url for e in pool.groups.get("decode", ()) if e.routable]
    names = policy.names_of(req)
    if not urls or not names:
        return float(req.prompt_tokens)
    best = max(policy.view.match(names, urls))
    hit = policy.cached_tokens(best, req, names) if policy.enough(best, req, names) else 0.0
    return max(req.prompt_tokens - hit, 0.0)


def disaggregate(pool: Pool, req: ApiRequest) -> bool:
    """Whether `req` should go through the prefill leg."""
    threshold = pool.config.disaggregate_min_tokens
    return threshold <= 0 or uncached_tokens(pool, req) > threshold
