"""Reading the few request fields the gateway must understand; everything else passes through."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from .config import Limits
from .errors import GatewayError
from .telemetry.trace import Trace

Route = Literal["completions", "chat"]
PATHS: dict[Route, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass
class ApiRequest:
    """A parsed OpenAI request; what routing policies see of it (policies.RoutingRequest)."""

    route: Route
    raw: bytes  # forwarded byte for byte where the gateway changes nothing
    body: dict
    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int  # an estimate, for prefill load balancing
    session_header: str | None = None  # the client's X-Session-Id
    _prefix_text: str | None = field(default=None, repr=False)
    trace: Trace | None = field(default=None, repr=False)  # the request's telemetry, when on

    @property
    def path(self) -> str:
        return PATHS[self.route]

    @property
    def session_key(self) -> str | None:
        if self.session_header:
            return self.session_header
        user = self.body.get("user")
        return user if isinstance(user, str) and user else None

    @property
    def prefix_text(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = render_prefix(self.route, self.body)
        return self._prefix_text


def render_prefix(route: Route, body: dict) -> str:
    """The request's prompt as one string, for prefix matching: a chat's messages in order,
    each as role and content, so that a conversation's next turn extends its previous one."""
    if route == "chat":
        parts = []
        for m in body.get("messages") or ():
            content = m.get("content", "")
            text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            parts.append(f"<|{m.get('role', '')}|>{text}")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return json.dumps(prompt)


def _bad(message: str, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, code)


def _optional_int(body: dict, key: str, low: int, high: int) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"'{key}' must be an integer from {low} to {high}, got {json.dumps(value)}")


def _check_prompt(prompt: object) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(len(p) for p in prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return 4 * len(prompt)
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return 4 * sum(len(p) for p in prompt)
    raise _bad("'prompt' must be a string, a list of strings, or token ids")


def _check_messages(messages: object) -> int:
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list")
    if not all(isinstance(m, dict) for m in messages):
        raise _bad("every item of 'messages' must be an object")
    return sum(len(json.dumps(m.get("content", ""))) for m in messages)


def parse_request(route: Route, raw: bytes, limits: Limits, session_header: str | None = None) -> ApiRequest:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise _bad(f"request body is not valid JSON: {err}", "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a non-empty string")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object")
    include_usage = bool(options and options.get("include_usage"))
    for key in ("max_tokens", "max_completion_tokens"):
        _optional_int(body, key, 1, limits.max_tokens)
    _optional_int(body, "n", 1, limits.max_n)
    if route == "chat":
        chars = _check_messages(body.get("messages"))
    else:
        if "prompt" not in body:
            raise _bad("'prompt' is required")
        chars = _check_prompt(body["prompt"])
    return ApiRequest(route, raw, body, model, stream, include_usage, max(1, chars // 4), session_header)
