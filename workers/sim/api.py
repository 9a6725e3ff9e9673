"""vLLM 0.32's response shapes: JSON bodies and SSE events (pre-encoded for the hot path)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from . import engine
from .protocol import ApiError
from .request import GenRequest, parse_body, parse_request
from .sampling import Choices, chat_logprobs, completion_logprobs

__all__ = [
    "ApiError",
    "GenRequest",
    "parse_body",
    "parse_request",
    "fingerprint",
    "full_response",
    "usage",
    "SseFormat",
    "prompt_token_ids",
]
VLLM_VERSION = "0.32.0"


def fingerprint(model: str, max_model_len: int) -> str:
    """vLLM's system_fingerprint: "vllm-<version>-<8 hex of the config>"."""
    digest = hashlib.blake2b(f"{model}\0{max_model_len}".encode(), digest_size=4).hexdigest()
    return f"vllm-{VLLM_VERSION}-{digest}"


def prompt_token_ids(prompt: str) -> list[int]:
    """A prompt's token ids (one per word; engine.prompt_token_ids), as echo's first chunk and
    `return_token_ids` carry them."""
    return engine.prompt_token_ids(prompt) or [0]


def usage(g: GenRequest, completion_tokens: int, in_stream: bool = False) -> dict[str, Any]:
    prompt_tokens = g.total_prompt_tokens
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    details = {"cached_tokens": g.cached_tokens} if g.report_cached else None
    if details is not None or not in_stream:
        out["prompt_tokens_details"] = details
    if not in_stream:
        out["completion_tokens_details"] = None
    return out


def _completion_choice(g: GenRequest, choices: Choices, c: int) -> dict[str, Any]:
    plan = choices.plans[c]
    prefix = g.prompt_of(c) if g.echo else ""
    logprobs = None
    if g.logprobs is not None:
        logprobs = completion_logprobs(choices, c, range(plan.count), len(prefix), g.logprobs)
    return {
        "index": c,
        "text": prefix + choices.text(c),
        "logprobs": logprobs,
        "finish_reason": plan.finish_reason,
        "stop_reason": plan.stop_reason,
        "token_ids": _token_ids(g, choices, c),
        "prompt_logprobs": None,
        "prompt_token_ids": prompt_token_ids(g.prompt_of(c)) if g.return_token_ids else None,
        "routed_experts": None,
    }


def _chat_choice(g: GenRequest, choices: Choices, c: int) -> dict[str, Any]:
    plan = choices.plans[c]
    logprobs = None if g.logprobs is None else chat_logprobs(choices, c, range(plan.count), g.logprobs)
    message = {
        "role": "assistant",
        "content": choices.text(c),
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    return {
        "index": c,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": plan.finish_reason,
        "stop_reason": plan.stop_reason,
        "token_ids": _token_ids(g, choices, c),
        "routed_experts": None,
    }


def _token_ids(g: GenRequest, choices: Choices, c: int) -> list[int] | None:
    return [choices.token_id(c, k) for k in range(choices.plans[c].count)] if g.return_token_ids else None


def full_response(
    g: GenRequest, created: int, choices: Choices, kv_params: dict[str, Any] | None, system_fingerprint: str
) -> dict[str, Any]:
    """Non-streaming completion / chat.completion object, keys in vLLM's order."""
    make = _chat_choice if g.chat else _completion_choice
    completion_tokens = sum(p.count for p in choices.plans)
    body: dict[str, Any] = {
        "id": g.response_id,
        "object": "chat.completion" if g.chat else "text_completion",
        "created": created,
        "model": g.model,
        "choices": [make(g, choices, c) for c in range(g.num_choices)],
        "service_tier": None,
        "system_fingerprint": system_fingerprint,
        "usage": usage(g, completion_tokens),
    }
    if g.chat:
        ids = prompt_token_ids(g.prompts[0]) if g.return_token_ids else None
        body.update(prompt_logprobs=None, prompt_token_ids=ids, prompt_text=None)
    body.update(kv_transfer_params=kv_params, ec_transfer_params=None, metrics=None)
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class SseFormat:
    """Pre-encoded pieces of every SSE event of one response, so a plain token costs a concat."""

    def __init__(self, g: GenRequest, created: int, choices: Choices, system_fingerprint: str) -> None:
        self._g = g
        self._choices = choices
        obj = b"chat.completion.chunk" if g.chat else b"text_completion"
        self._head = b'data: {"id":%s,"object":"%s","created":%d,"model":%s' % (
            _dumps(g.response_id),
            obj,
            created,
            _dumps(g.model),
        )
        field = b'"delta":{"content":' if g.chat else b'"text":'
        self._pre = [self._head + b',"choices":[{"index":%d,%s' % (i, field) for i in range(g.num_choices)]
        self._close = b"}" if g.chat else b""
        self._fingerprint = b',"system_fingerprint":%s' % _dumps(system_fingerprint)
        self._offsets = [len(g.prompt_of(c)) if g.echo else 0 for c in range(g.num_choices)]
        self._sent = [0] * g.num_choices  # tokens sent per choice (continuous usage)

    def role_events(self) -> bytes:
        if not self._g.chat:
            return b""
        usage = self._usage_field(0)
        first = _dumps(prompt_token_ids(self._g.prompts[0])) if self._g.return_token_ids else b"null"
        return b"".join(
            self._head + b',"choices":[{"index":%d,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]%s,"prompt_token_ids":%s,"prompt_text":null}\n\n'
            % (i, usage, first if i == 0 else b"null")
            for i in range(self._g.num_choices)
        )

    def _usage_field(self, completion_tokens: int) -> bytes:
        if not self._g.continuous_usage:
            return b""
        return b',"usage":%s' % _dumps(usage(self._g, completion_tokens, in_stream=True))

    def _logprobs(self, choice: int, k: int) -> bytes:
        g = self._g
        if g.logprobs is None:
            return b"null"
        if g.chat:
            return _dumps(chat_logprobs(self._choices, choice, range(k, k + 1), g.logprobs))
        lp = completion_logprobs(self._choices, choice, range(k, k + 1), self._offsets[choice], g.logprobs)
        self._offsets[choice] += len(self._choices.token(choice, k))
        return _dumps(lp)

    def token_event(self, choice: int, k: int) -> bytes:
        g, plan = self._g, self._choices.plans[choice]
        last = k + 1 == plan.count
        text_json = self._choices.token_json(choice, k)
        prompt_ids, token_ids = b"null", b"null"
        if g.echo and k == 0:
            text_json = _dumps(g.prompt_of(choice) + self._choices.token(choice, 0))
        if (g.echo or g.return_token_ids) and k == 0:
            prompt_ids = _dumps(prompt_token_ids(g.prompt_of(choice)))
        if g.return_token_ids:
            token_ids = b"[%d]" % self._choices.token_id(choice, k)
        self._sent[choice] = k + 1
        if last:
            ends = b',"finish_reason":"%s","stop_reason":%s' % (plan.finish_reason.encode(), _dumps(plan.stop_reason))
        else:
            ends = b',"finish_reason":null' + (b"" if g.chat else b',"stop_reason":null')
        ids = (
            b',"token_ids":%s' % token_ids
            if g.chat
            else b',"prompt_token_ids":%s,"token_ids":%s' % (prompt_ids, token_ids)
        )
        usage = self._usage_field(sum(self._sent))
        # vLLM puts the fingerprint on a choice's last chunk, unless usage follows (then
        # on the usage chunk only) or every chunk carries usage.
        trailer = self._fingerprint if last and not usage and not g.include_usage else b""
        return (
            self._pre[choice]
            + text_json
            + self._close
            + b',"logprobs":'
            + self._logprobs(choice, k)
            + ends
            + ids
            + b"}]"
            + usage
            + trailer
            + b"}\n\n"
        )

    def tail(self, completion_tokens: int) -> bytes:
        out = b""
        if self._g.include_usage:
            out = (
                self._head
                + b',"choices":[],"usage":%s' % _dumps(usage(self._g, completion_tokens, True))
                + self._fingerprint
                + b"}\n\n"
            )
        return out + b"data: [DONE]\n\n"
