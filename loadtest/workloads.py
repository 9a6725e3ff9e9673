"""Request generators: llmperf-style random prompts, multi-turn conversations, a shared long system prompt.

Each workload yields `Request`s; `request_body` turns one into an OpenAI JSON body. `bodies()` is the
one-call entry for other benchmarks (e.g. a routing benchmark): an endless iterator of request bodies.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from .tokens import TokenCounter, WordCounter

Api = Literal["chat", "completions"]
WORKLOADS = ("random", "multi-turn", "shared-prefix")

# Plain words, so any tokenizer encodes them; prompts are random draws from them.
WORDS = (
    "the of and to in is was that for on with as by at from his her they which this have had not are "
    "but were one all their there been has when who will more no if out so said what up its about into "
    "than them can only other new some could time these two may then first any my now such like our "
    "over man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take three river stone cloud light "
    "garden window morning evening silver golden quiet summer winter harbor valley mountain forest letter"
).split()


@dataclass
class Request:
    """One request to send: chat messages (or a prompt), the output length asked, the input tokens."""

    messages: list[dict[str, str]]
    max_tokens: int
    input_tokens: int
    session: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["content"])


@dataclass
class Shape:
    """llmperf's knobs: input and output lengths drawn from normal distributions (positive ints)."""

    mean_input_tokens: int = 550
    stddev_input_tokens: int = 150
    mean_output_tokens: int = 150
    stddev_output_tokens: int = 80


def positive_gauss(rng: random.Random, mean: float, stddev: float) -> int:
    """llmperf's draw: int(gauss(mean, stddev)) until positive."""
    while True:
        value = int(rng.gauss(mean, stddev))
        if value > 0:
            return value


def random_text(rng: random.Random, tokens: int, counter: TokenCounter) -> str:
    """Random words cut to exactly `tokens` tokens of `counter` (at most; whole tokens)."""
    words: list[str] = []
    text = ""
    while counter.count(text) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(max(8, tokens - counter.count(text))))
        text = " ".join(words)
    return counter.truncate(text, tokens)


def random_prompts(shape: Shape, counter: TokenCounter, seed: int = 0) -> Iterator[Request]:
    """llmperf-style: a fresh random user prompt per request, empty system message as llmperf sends."""
    rng = random.Random(seed)
    while True:
        out = positive_gauss(rng, shape.mean_output_tokens, shape.stddev_output_tokens)
        n_in = positive_gauss(rng, shape.mean_input_tokens, shape.stddev_input_tokens)
        text = random_text(rng, n_in, counter)
        yield Request([{"role": "system", "content": ""}, {"role": "user", "content": text}], out, counter.count(text))


def shared_prefix(shape: Shape, counter: TokenCounter, seed: int = 0, system_tokens: int = 1000) -> Iterator[Request]:
    """Every request starts with the same long system prompt (prefix caching / prefix-aware routing)."""
    rng = random.Random(seed)
    system = random_text(random.Random(seed + 1), system_tokens, counter)
    n_system = counter.count(system)
    while True:
        out = positive_gauss(rng, shape.mean_output_tokens, shape.stddev_output_tokens)
        text = random_text(rng, positive_gauss(rng, shape.mean_input_tokens, shape.stddev_input_tokens), counter)
        yield Request(
            [{"role": "system", "content": system}, {"role": "user", "content": text}],
            out,
            n_system + counter.count(text),
            meta={"system_tokens": n_system},
        )


def multi_turn(
    shape: Shape, counter: TokenCounter, seed: int = 0, turns: int = 4, sessions: int = 8
) -> Iterator[Request]:
    """Conversations of `turns` turns, `sessions` of them interleaved: turn k resends turns 1..k-1 (with a
    synthetic assistant reply of the asked length) plus a new user message. `session` names the
    conversation (sent as the OpenAI `user` field, which session-aware routing reads)."""
    rng = random.Random(seed)
    started = 0
    live: list[tuple[str, list[dict[str, str]], int]] = []
    while True:
        while len(live) < sessions:
            live.append((f"session-{seed}-{started}", [], 0))
            started += 1
        index = rng.randrange(len(live))
        name, history, done = live[index]
        out = positive_gauss(rng, shape.mean_output_tokens, shape.stddev_output_tokens)
        user = random_text(rng, positive_gauss(rng, shape.mean_input_tokens, shape.stddev_input_tokens), counter)
        messages = [*history, {"role": "user", "content": user}]
        yield Request(
            messages, out, sum(counter.count(m["content"]) for m in messages), session=name, meta={"turn": done + 1}
        )
        reply = {"role": "assistant", "content": random_text(rng, out, counter)}
        live[index] = (name, [*messages, reply], done + 1)
        if done + 1 >= turns:
            live.pop(index)


def make_workload(name: str, shape: Shape, counter: TokenCounter, seed: int = 0, **options: Any) -> Iterator[Request]:
    if name == "random":
        return random_prompts(shape, counter, seed)
    if name == "multi-turn":
        return multi_turn(shape, counter, seed, **options)
    if name == "shared-prefix":
        return shared_prefix(shape, counter, seed, **options)
    raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")


def request_body(
    req: Request, model: str, api: Api, extra: dict[str, Any] | None = None, ignore_eos: bool = True
) -> dict[str, Any]:
    """The OpenAI streaming body; `extra` (additional sampling params) overrides the defaults."""
    body: dict[str, Any] = {"model": model, "stream": True, "max_tokens": req.max_tokens}
    if api == "chat":
        body["messages"] = req.messages
    else:
        body["prompt"] = req.prompt
    if ignore_eos:
        body["ignore_eos"] = True
    if req.session:
        body["user"] = req.session
    body.update(extra or {})
    return body


def bodies(
    model: str,
    workload: str = "random",
    api: Api = "chat",
    shape: Shape | None = None,
    counter: TokenCounter | None = None,
    seed: int = 0,
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """Endless request bodies of a workload: the entry point for other benchmarks."""
    for req in make_workload(workload, shape or Shape(), counter or WordCounter(), seed, **options):
        yield request_body(req, model, api)
