"""OpenAI/vLLM request validation and response shapes (JSON and SSE bytes)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .engine import count_tokens, render_chat

ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError",
    500: "InternalServerError", 503: "ServiceUnavailableError",
}
DEFAULT_MAX_TOKENS = 16


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def to_json(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "InternalServerError"),
                      "param": param, "code": status}}


@dataclass
class GenRequest:
    chat: bool
    base_id: str
    id_header: str | None
    model: str
    prompts: list[str]
    prompt_tokens: list[int]
    n: int
    max_tokens: int
    stream: bool
    include_usage: bool
    kv_params: dict[str, Any] | None
    cached_tokens: int = 0  # prompt tokens found in the prefix cache (set by the prefill)
    report_cached: bool = False  # --enable-prompt-tokens-details

    @property
    def response_id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.base_id

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def total_prompt_tokens(self) -> int:
        return sum(self.prompt_tokens)

    def prompt_of(self, choice: int) -> str:
        return self.prompts[choice // self.n]

    def sample_index(self, choice: int) -> int:
        return choice % self.n


def _opt_int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key} must be an integer, got {value!r}.", key)
    if value < minimum:
        raise ApiError(400, f"{key} must be at least {minimum}, got {value}.", key)
    return value


def _prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt:
        raise ApiError(400, "Token-id prompts are not supported by the simulated worker.", "prompt")
    raise ApiError(400, "prompt must be a string or a non-empty list of strings.", "prompt")


def _chat_prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list.", "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, "each message must be an object with a string role.", "messages")
    return render_chat(messages)


def _kv_params(body: dict[str, Any]) -> dict[str, Any] | None:
    kv = body.get("kv_transfer_params")
    if kv is None:
        return None
    if not isinstance(kv, dict):
        raise ApiError(400, "kv_transfer_params must be an object.", "kv_transfer_params")
    if not (kv.get("do_remote_decode") or kv.get("do_remote_prefill")):
        return None
    return kv


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    return body


def parse_request(body: dict[str, Any], chat: bool, id_header: str | None,
                  served_model: str, max_model_len: int) -> GenRequest:
    model = body.get("model")
    if model is not None and model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    prompts = [_chat_prompt(body)] if chat else _prompts(body)
    if not chat and body.get("echo"):
        raise ApiError(400, "echo is not supported by the simulated worker.", "echo")
    max_tokens = _opt_int(body, "max_tokens", 1)
    if chat:
        max_tokens = _opt_int(body, "max_completion_tokens", 1) or max_tokens
    max_tokens = max_tokens or DEFAULT_MAX_TOKENS
    n = _opt_int(body, "n", 1) or 1
    _opt_int(body, "min_tokens", 0)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean.", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "stream_options must be an object.", "stream_options")
    if opts and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    prompt_tokens = [count_tokens(p) for p in prompts]
    longest = max(prompt_tokens)
    if longest + max_tokens > max_model_len:
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. "
                       f"However, you requested {longest + max_tokens} tokens ({longest} in the "
                       f"messages, {max_tokens} in the completion). Please reduce the length of "
                       "the messages or completion.", "max_tokens")
    return GenRequest(
        chat=chat, base_id=id_header or uuid.uuid4().hex, id_header=id_header,
        model=served_model, prompts=prompts, prompt_tokens=prompt_tokens, n=n,
        max_tokens=max_tokens, stream=stream,
        include_usage=bool(opts and opts.get("include_usage")), kv_params=_kv_params(body),
    )


def usage(g: GenRequest, completion_tokens: int) -> dict[str, Any]:
    prompt_tokens = g.total_prompt_tokens
    details = {"cached_tokens": g.cached_tokens} if g.report_cached else None
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens, "prompt_tokens_details": details}


def full_response(g: GenRequest, created: int, texts: list[str],
                  kv_params: dict[str, Any] | None) -> dict[str, Any]:
    """Non-streaming completion / chat.completion object."""
    if g.chat:
        choices: list[dict[str, Any]] = [
            {"index": i, "message": {"role": "assistant", "content": t, "refusal": None,
                                     "annotations": None, "audio": None, "function_call": None,
                                     "tool_calls": [], "reasoning_content": None},
             "logprobs": None, "finish_reason": "length", "stop_reason": None}
            for i, t in enumerate(texts)]
    else:
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": "length",
                    "stop_reason": None, "prompt_logprobs": None} for i, t in enumerate(texts)]
    return {
        "id": g.response_id, "object": "chat.completion" if g.chat else "text_completion",
        "created": created, "model": g.model, "choices": choices,
        "usage": usage(g, g.num_choices * g.max_tokens),
        "prompt_logprobs": None, "kv_transfer_params": kv_params,
    }


class SseFormat:
    """Pre-encoded pieces of every SSE event of one response, so a token costs a concat."""

    def __init__(self, g: GenRequest, created: int) -> None:
        self._g = g
        obj = b"chat.completion.chunk" if g.chat else b"text_completion"
        self._head = b'data: {"id":%s,"object":"%s","created":%d,"model":%s' % (
            json.dumps(g.response_id).encode(), obj, created, json.dumps(g.model).encode())
        usage_null = b',"usage":null' if g.include_usage else b""
        field = b'"delta":{"content":' if g.chat else b'"text":'
        close = b"}" if g.chat else b""
        self._pre = [self._head + b',"choices":[{"index":%d,%s' % (i, field)
                     for i in range(g.num_choices)]
        self._mid = close + b',"logprobs":null,"finish_reason":null%s}]%s}\n\n' % (
            b"" if g.chat else b',"stop_reason":null', usage_null)
        self._end = close + b',"logprobs":null,"finish_reason":"length","stop_reason":null}]%s}\n\n' % usage_null
        self._usage_null = usage_null

    def role_events(self) -> bytes:
        if not self._g.chat:
            return b""
        return b"".join(
            self._head + b',"choices":[{"index":%d,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]%s}\n\n' % (i, self._usage_null)
            for i in range(self._g.num_choices))

    def token_event(self, choice: int, text_json: bytes, last: bool) -> bytes:
        return self._pre[choice] + text_json + (self._end if last else self._mid)

    def tail(self, completion_tokens: int) -> bytes:
        out = b""
        if self._g.include_usage:
            u = usage(self._g, completion_tokens)
            if u["prompt_tokens_details"] is None:
                del u["prompt_tokens_details"]
            out = self._head + b',"choices":[],"usage":%s}\n\n' % json.dumps(
                u, separators=(",", ":")).encode()
        return out + b"data: [DONE]\n\n"
