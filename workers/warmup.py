"""Warm up the KV transfer path of P/D pools before a launcher reports them ready.

With vLLM's NixlConnector a decode worker handshakes with a prefill worker on the
first request that names it, and on CPU the first transfers after a start can stall
for seconds, up to P's KV lease (30 s; docs/real-vllm.md, "Occasionally slow first
transfer"). `warm_up` therefore runs full P->D transfers for every prefill/decode
pair, as the gateway would (P with max_tokens=1 and do_remote_decode, then D with the
kv_transfer_params P returned), until each pair has done `min_rounds` and its latest
transfer took at most `fast_s`, or `max_rounds` were tried. Plain HTTP/1.1 on asyncio
streams with httptools: workers/ never imports the gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools

from workers.http_client import request
from workers.plan import WorkerSpec

WARMUP_PROMPT = "warm-up {n}: the quick brown fox jumps over the lazy dog while"


class WarmupError(RuntimeError):
    """A warm-up transfer failed (an HTTP error, a refused connection, no KV params)."""


@dataclass(frozen=True)
class WarmupPolicy:
    min_rounds: int = 2  # transfers per pair at least
    max_rounds: int = 6  # give up on being fast after this many
    fast_s: float = 1.0  # a pair is warm once a transfer took at most this
    timeout_s: float = 120.0  # per HTTP request: a stall ends with P's lease (30 s)


@dataclass
class PairResult:
    prefill: str
    decode: str
    seconds: list[float] = field(default_factory=list)  # one per round, P+D together
    error: str | None = None

    @property
    def warm(self) -> bool:
        return self.error is None and bool(self.seconds)

    def summary(self) -> str:
        times = ", ".join(f"{s:.2f}" for s in self.seconds) or "-"
        state = f"failed: {self.error}" if self.error else "warm"
        return f"{self.prefill} -> {self.decode}: {state} (transfers: {times} s)"


def pd_pairs(workers: Sequence[WorkerSpec], nixl_pools: Collection[str]) -> list[tuple[str, str, str]]:
    """(prefill URL, decode URL, model) for every prefill/decode pair of each NIXL pool: a
    decode handshakes with each prefill separately, on the first request that names it."""
    pairs = []
    for pool in sorted(nixl_pools):
        prefills = [w for w in workers if w.pool == pool and w.role == "prefill"]
        decodes = [w for w in workers if w.pool == pool and w.role == "decode"]
        pairs += [(p.url, d.url, p.model) for p in prefills for d in decodes]
    return pairs


async def _post(url: str, payload: bytes) -> tuple[int, bytes]:
    parts = urlsplit(url)
    return await request(parts.hostname or "127.0.0.1", parts.port or 80, "POST", parts.path or "/", payload)


async def post_json(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """POST a JSON body over a fresh connection and return the JSON answer; WarmupError
    on anything else. Cancellable (a Ctrl-C during `up`'s warm-up does not wait for it)."""
    try:
        status, data = await asyncio.wait_for(_post(url, json.dumps(body).encode()), timeout_s)
        answer = json.loads(data) if status == 200 else None
    except TimeoutError:
        raise WarmupError(f"{url}: no answer in {timeout_s:g} s") from None
    except (OSError, ValueError, httptools.HttpParserError) as err:
        raise WarmupError(f"{url}: {err!r}") from None
    if status != 200:
        raise WarmupError(f"{url}: HTTP {status} {data[:200].decode(errors='replace')}")
    if not isinstance(answer, dict):
        raise WarmupError(f"{url}: the answer is not a JSON object")
    return answer


async def transfer(prefill: str, decode: str, model: str, prompt: str, timeout_s: float) -> dict[str, Any]:
    """One full P->D transfer as the gateway does it; returns D's answer."""
    body = {"model": model, "prompt": prompt, "temperature": 0}
    p = await post_json(
        f"{prefill}/v1/completions",
        {**body, "max_tokens": 1, "stream": False, "kv_transfer_params": {"do_remote_decode": True}},
        timeout_s,
    )
    params = p.get("kv_transfer_params")
    if not isinstance(params, dict):
        raise WarmupError(f"{prefill}: the answer has no kv_transfer_params (is it a NIXL prefill?)")
    d_body = {**body, "max_tokens": 2, "kv_transfer_params": params}
    return await post_json(f"{decode}/v1/completions", d_body, timeout_s)


async def warm_pair(
    prefill: str, decode: str, model: str, policy: WarmupPolicy, report: Callable[[str], None], first_n: int = 0
) -> PairResult:
    result = PairResult(prefill, decode)
    for n in range(policy.max_rounds):
        prompt = WARMUP_PROMPT.format(n=first_n + n)  # a new prompt: no prefix-cache hit on D
        t0 = time.monotonic()
        try:
            await transfer(prefill, decode, model, prompt, policy.timeout_s)
        except WarmupError as err:
            result.error = str(err)
            report(f"warm-up {prefill} -> {decode}: {err}")
            return result
        result.seconds.append(time.monotonic() - t0)
        report(f"warm-up {prefill} -> {decode}: transfer {n + 1} took {result.seconds[-1]:.2f} s")
        if n + 1 >= policy.min_rounds and result.seconds[-1] <= policy.fast_s:
            break
    return result


async def warm_up(
    pairs: Sequence[tuple[str, str, str]],
    policy: WarmupPolicy,
    report: Callable[[str], None] = lambda _: None,
) -> list[PairResult]:
    """Warm every (prefill URL, decode URL, model) pair, one pair at a time (parallel
    transfers would only compete for the same cores and lengthen each other)."""
    results = []
    for i, (prefill, decode, model) in enumerate(pairs):
        results.append(await warm_pair(prefill, decode, model, policy, report, first_n=i * policy.max_rounds))
    return results
