"""Deterministic workloads for the routing benchmark: lists of clients, each a sequence of
chat requests sent one after the other (a client's next request waits for the previous).

The simulator counts whitespace-separated words as tokens, so sizes here are in words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from workers.sim.engine import completion_text, render_chat

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "sigma tau upsilon phi chi psi omega apple river stone cloud forest engine signal vector "
    "matrix kernel buffer packet socket thread window garden silver copper harbor market"
).split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass
class Workload:
    name: str
    clients: list[list[dict]] = field(default_factory=list)  # each client's request bodies, in order
    think_s: float = 0.0  # a client waits uniform(0, think_s) before each request (seeded per client)

    @property
    def requests(self) -> int:
        return sum(len(c) for c in self.clients)


def _chat(model: str, messages: list[dict], max_tokens: int, user: str | None = None) -> dict:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if user:
        body["user"] = user
    return body


def multi_turn(
    model: str,
    conversations: int = 32,
    turns: int = 8,
    context_words: int = 400,
    user_words: int = 40,
    reply_words: int = 80,
    max_tokens: int = 8,
    seed: int = 1,
    generated_replies: bool = True,
) -> Workload:
    """(a) Chat: each conversation opens with its own context (instructions, a document), and
    each turn re-sends the whole history.

    `generated_replies` (the default): each turn asks for `reply_words` tokens and the next turn
    re-sends the reply the simulator generates for it (deterministic: a function of the prompt),
    as a chat client does; with the simulator's `prefix_cache_outputs` the worker that wrote a
    reply holds its KV, as vLLM does. Otherwise (the first version of this workload) the replies
    are synthesized words the worker never saw, and only `max_tokens` are generated: every turn
    then costs its reply's tokens as uncached prefill even on the worker that served the
    conversation, which overstates the uncached work of a real chat."""
    rng = random.Random(seed)
    name = "multi-turn" if generated_replies else "multi-turn-v1"
    out = Workload(name, think_s=1.0)  # users read and type between turns
    for c in range(conversations):
        messages = [{"role": "system", "content": f"conversation {c}. " + words(rng, context_words)}]
        client = []
        for _ in range(turns):
            messages = [*messages, {"role": "user", "content": words(rng, user_words)}]
            if generated_replies:
                client.append(_chat(model, messages, reply_words, user=f"conv-{c}"))
                reply = completion_text(render_chat(messages), 0, reply_words)
            else:
                client.append(_chat(model, messages, max_tokens, user=f"conv-{c}"))
                reply = words(rng, reply_words)
            messages = [*messages, {"role": "assistant", "content": reply}]
        out.clients.append(client)
    return out


def shared_prefix(
    model: str,
    prompts: int = 16,
    clients: int = 16,
    per_client: int = 12,
    low: int = 2000,
    high: int = 8000,
    tail_words: int = 40,
    max_tokens: int = 8,
    seed: int = 2,
) -> Workload:
    """(b) Agent-like: a few long system prompts (2-8k tokens) with short varying tails; each
    request picks a prompt (the first ones more often)."""
    rng = random.Random(seed)
    systems = [f"agent {i}. " + words(rng, rng.randint(low, high)) for i in range(prompts)]
    weights = [1 / (i + 1) ** 0.5 for i in range(prompts)]
    out = Workload("shared-prefix", think_s=0.2)
    for _ in range(clients):
        client = []
        for _ in range(per_client):
            system = rng.choices(systems, weights)[0]
            messages = [{"role": "system", "content": system}, {"role": "user", "content": words(rng, tail_words)}]
            client.append(_chat(model, messages, max_tokens))
        out.clients.append(client)
    return out


def no_sharing(
    model: str, clients: int = 16, per_client: int = 10, prompt_words: int = 1000, max_tokens: int = 8, seed: int = 3
) -> Workload:
    """(c) Random prompts that share nothing (not even a system prompt)."""
    rng = random.Random(seed)
    out = Workload("no-sharing", think_s=0.2)
    for c in range(clients):
        client = [
            _chat(model, [{"role": "user", "content": f"{c}-{i} " + words(rng, prompt_words)}], max_tokens)
            for i in range(per_client)
        ]
        out.clients.append(client)
    return out
