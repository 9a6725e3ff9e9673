"""What each choice generates: token texts, where a stop string ends it, and fake logprobs.

Deterministic: token k of choice i depends only on the prompt, the sample index and k
(engine.py), and so do its logprobs, so a stream and a non-stream answer agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .engine import VOCAB, VOCAB_JSON, choice_seed, token_id
from .request import GenRequest


@dataclass(frozen=True)
class Plan:
    """How a choice ends: `count` tokens, the last one cut to `last_text` by a stop string."""

    count: int
    finish_reason: str  # "length" | "stop"
    stop_reason: str | None = None
    last_text: str | None = None


class Choices:
    """Token source for every choice of a request, with optional k=0 overrides (from KV)."""

    def __init__(self, g: GenRequest, first_tokens: list[str] | None) -> None:
        self._g = g
        seeds = [choice_seed(g.prompt_of(c), g.sample_index(c)) for c in range(g.num_choices)]
        self._seeds = [seed for seed, _ in seeds]
        self._offsets = [offset for _, offset in seeds]  # a continued generation's tokens so far
        self._first = first_tokens or []
        self.plans = [self._plan(c) for c in range(g.num_choices)]

    def token_id(self, choice: int, k: int) -> int:
        return token_id(self._seeds[choice], self._offsets[choice] + k)

    def token(self, choice: int, k: int) -> str:
        """The text of token k as the client receives it (a stop string may cut the last)."""
        plan = self.plans[choice]
        if k == plan.count - 1 and plan.last_text is not None:
            return plan.last_text
        return self._raw(choice, k)

    def token_json(self, choice: int, k: int) -> bytes:
        plan = self.plans[choice]
        if (k == 0 and choice < len(self._first)) or (k == plan.count - 1 and plan.last_text is not None):
            return json.dumps(self.token(choice, k)).encode()
        return VOCAB_JSON[self.token_id(choice, k)]

    def text(self, choice: int) -> str:
        return "".join(self.token(choice, k) for k in range(self.plans[choice].count))

    def _raw(self, choice: int, k: int) -> str:
        if k == 0 and choice < len(self._first):
            return self._first[choice]
        return " " + VOCAB[self.token_id(choice, k)]

    def _plan(self, choice: int) -> Plan:
        g = self._g
        if not g.stop:
            return Plan(g.max_tokens, "length")
        longest = max(len(s) for s in g.stop)
        text = ""
        for k in range(g.max_tokens):
            piece = self._raw(choice, k)
            start = max(0, len(text) - longest + 1)
            text += piece
            hit = _find_stop(text, start, g.stop)
            if hit is not None:
                at, stop = hit
                end = at + len(stop) if g.include_stop else at
                before = len(text) - len(piece)
                # A stop that began in an earlier token cuts into text already sent: vLLM
                # holds back that much; the simulator cuts this token to nothing.
                return Plan(k + 1, "stop", stop, text[before:end] if end > before else "")
        return Plan(g.max_tokens, "length")


def _find_stop(text: str, start: int, stops: list[str]) -> tuple[int, str] | None:
    for stop in stops:  # the first stop string in the request's order wins, as in vLLM
        at = text.find(stop, start)
        if at >= 0:
            return at, stop
    return None


# -- logprobs ------------------------------------------------------------------------


def _logprob(tid: int, k: int) -> float:
    return -round(0.25 + ((tid * 31 + k * 17) % 97) / 16, 4)


def _alternatives(tid: int, n: int) -> list[tuple[str, float]]:
    return [(" " + VOCAB[(tid + 1 + j) % len(VOCAB)], -round(0.05 * (j + 1), 4)) for j in range(n)]


def completion_logprobs(choices: Choices, choice: int, ks: range, offset: int, top: int) -> dict[str, Any]:
    """Completions' logprobs object for tokens ks, text offsets counted from `offset`."""
    tokens, lps, tops, offsets = [], [], [], []
    for k in ks:
        text, tid = choices.token(choice, k), choices.token_id(choice, k)
        lp = _logprob(tid, k)
        offsets.append(offset)
        offset += len(text)
        tokens.append(text)
        lps.append(lp)
        tops.append({text: lp} | {t: v for t, v in _alternatives(tid, top) if t != text})
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}


def _chat_entry(token: str, lp: float) -> dict[str, Any]:
    return {"token": token, "logprob": lp, "bytes": list(token.encode())}


def chat_logprobs(choices: Choices, choice: int, ks: range, top: int) -> dict[str, Any]:
    content = []
    for k in ks:
        text, tid = choices.token(choice, k), choices.token_id(choice, k)
        lp = _logprob(tid, k)
        alts = [_chat_entry(text, lp)] + [_chat_entry(t, v) for t, v in _alternatives(tid, top)]
        content.append(_chat_entry(text, lp) | {"top_logprobs": alts[:top]})
    return {"content": content}
