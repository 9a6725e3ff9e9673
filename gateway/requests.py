"""Reading the few request fields the gateway must understand; everything else passes through."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .config import Limits
from .errors import bad_request
from .forms import form_fields
from .payload import dumps
from .routes import PATHS, SPECS, Route


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
    content_type: bytes | None = None  # a form's own (multipart); None: JSON
    _prefix_text: str | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return PATHS[self.route]

    @property
    def prompt_count(self) -> int:
        """How many prompts a completions request carries (a list of strings or of token lists)."""
        return prompt_count(self.route, self.body)

    def without(self, key: str) -> None:
        """Drop a field the gateway owns from what the workers get."""
        if key in self.body:
            del self.body[key]
            self.raw = dumps(self.body)

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


def prompt_count(route: Route, body: dict) -> int:
    prompt = body.get("prompt")
    if route == "completions" and isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def _check_sequences(route: Route, body: dict, limit: int) -> None:
    """The sequences a request asks the worker to generate (prompts x max(n, best_of)) are bounded."""
    per_prompt = max(body.get("n") or 1, body.get("best_of") or 1)
    prompts = prompt_count(route, body)
    if prompts * per_prompt > limit:
        raise bad_request(
            f"the request asks for {prompts} prompt(s) x {per_prompt} completion(s) = {prompts * per_prompt} "
            f"sequences; at most {limit} are allowed per request",
            "n",
            code="too_many_sequences",
        )


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
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return json.dumps(prompt)


def _optional_int(body: dict, key: str, low: int, high: int) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"'{key}' must be an integer from {low} to {high}, got {json.dumps(value)[:40]}", key)


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
    raise bad_request("'prompt' must be a string, a list of strings, or token ids", "prompt")


def _check_messages(messages: object) -> int:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise bad_request("every item of 'messages' must be an object", "messages")
    return sum(len(json.dumps(m.get("content", ""))) for m in messages)


def parse_request(
    route: Route, raw: bytes, limits: Limits, session_header: str | None = None, content_type: bytes = b""
) -> ApiRequest:
    if SPECS[route].kind == "multipart":
        return _parse_form(route, raw, content_type, session_header)
    try:
        return _parse(route, raw, limits, session_header)
    except RecursionError:
        raise bad_request("request body is nested too deeply", code="invalid_json") from None


def _load(raw: bytes) -> dict:
    encoding = json.detect_encoding(raw)
    if encoding != "utf-8":  # json.loads would take UTF-16/32 and a BOM; workers and RFC 8259 do not
        raise bad_request(
            f"request body must be UTF-8 JSON without a byte order mark, not {encoding}", code="invalid_json"
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    if b"\\ud" in raw or b"\\uD" in raw:  # a \uD800-\uDFFF escape: paired, or a lone surrogate?
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise bad_request(
                "request body contains a lone surrogate (an unpaired \\uD800-\\uDFFF escape), which is not text",
                code="invalid_json",
            ) from None
    return body


def _parse_other(route: Route, raw: bytes, body: dict, session_header: str | None) -> ApiRequest:
    """A route other than completions and chat: the model (optional where vLLM has it so) and
    whether it streams; the rest is the worker's to judge."""
    model = body.get("model")
    if model is None:
        model = ""
    elif not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string", "model")
    stream = body.get("stream") if SPECS[route].streams else None
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    return ApiRequest(route, raw, body, model, bool(stream), False, max(1, len(raw) // 4), session_header)


def _parse_form(route: Route, raw: bytes, content_type: bytes, session_header: str | None) -> ApiRequest:
    fields = form_fields(raw, content_type)
    stream = fields.get("stream", "false").strip().lower() in ("true", "1")
    body: dict = {"model": fields["model"]} if "model" in fields else {}
    model = body.get("model", "")
    req = ApiRequest(route, raw, body, model, stream, False, max(1, len(raw) // 4096), session_header)
    req.content_type = content_type
    return req


def _parse(route: Route, raw: bytes, limits: Limits, session_header: str | None) -> ApiRequest:
    body = _load(raw)
    if route not in ("completions", "chat"):
        return _parse_other(route, raw, body, session_header)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    for key in ("max_tokens", "max_completion_tokens"):
        _optional_int(body, key, 1, limits.max_tokens)
    for key in ("n", "best_of"):
        _optional_int(body, key, 1, limits.max_n)
    if route == "chat":
        chars = _check_messages(body.get("messages"))
    else:
        if "prompt" not in body:
            raise bad_request("'prompt' is required", "prompt")
        chars = _check_prompt(body["prompt"])
    _check_sequences(route, body, limits.max_sequences)
    return ApiRequest(route, raw, body, model, stream, include_usage, max(1, chars // 4), session_header)
