"""What a prefill/decode pool's decode would refuse though its prefill accepts it, refused before
the prefill runs, in vLLM 0.32's words.

The prefill gets a one-token, non-streaming copy without `min_tokens` or `stream_options`
(common.prefill_body), so it accepts requests that the decode then refuses: the prefill's work
is wasted, and when vLLM refuses in its request validators (before its serving code) nothing
frees the prefill's KV. The checks here are those validators (CompletionRequest /
ChatCompletionRequest `validate_stream_options`, `check_logprobs`; pydantic's `int` / `bool`
fields) and SamplingParams' `min_tokens` checks, with vLLM's messages, types and params.
"""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from ..errors import GatewayError
from ..requests import ApiRequest

_INT: TypeAdapter[int] = TypeAdapter(int)
_BOOL: TypeAdapter[bool | None] = TypeAdapter(bool | None)
_MAX_INPUT_CHARS = 200  # vLLM's _MAX_ERROR_INPUT_CHARS


class VllmRefusal(GatewayError):
    """A 400 the gateway answers for the decode, in vLLM's envelope (its `type` and a numeric `code`)."""

    def __init__(self, message: str, param: str | None, err_type: str = "BadRequestError") -> None:
        super().__init__(400, message, "400", param=param)
        self.err_type = err_type

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": 400}}


def _invalid(message: str, param: str, value: object = None) -> VllmRefusal:
    """vLLM's VLLMValidationError: `(parameter=..., value=...)` appended to the message."""
    extras = f"parameter={param}" + (f", value={value}" if value is not None else "")
    return VllmRefusal(f"{message} ({extras})", param)


def _typed(adapter: TypeAdapter, value: object, loc: tuple[str, ...]) -> object:
    """`value` as pydantic (lax mode) reads it, or its error rendered as vLLM renders FastAPI's."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(("body", *loc))
        shown = {"type": err["type"], "loc": param, "msg": err["msg"], "input": _input(value)}
        if "ctx" in err:
            shown["ctx"] = {k: str(v) if isinstance(v, Exception) else v for k, v in err["ctx"].items()}
        raise VllmRefusal(f"1 validation error:\n  {shown}", param, "Bad Request") from None


def _input(value: object) -> object:
    if isinstance(value, str):
        return value if len(value) <= _MAX_INPUT_CHARS else value[:_MAX_INPUT_CHARS] + "...[truncated]"
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return str(value)


def check(req: ApiRequest) -> None:
    """Raise what the decode would answer to `req` that the prefill would not."""
    body = req.body
    _check_stream_fields(body)
    _check_min_tokens(body, req.route == "chat")


def _check_stream_fields(body: dict) -> None:
    prompt_logprobs = body.get("prompt_logprobs")
    if (
        body.get("stream")
        and isinstance(prompt_logprobs, (int, float))
        and (prompt_logprobs > 0 or prompt_logprobs == -1)
    ):
        raise _invalid("`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
    options = body.get("stream_options")
    if options and not body.get("stream"):
        raise _invalid("Stream options can only be defined when `stream=True`.", "stream_options")
    for key in ("include_usage", "continuous_usage_stats"):
        if isinstance(options, dict) and key in options:
            _typed(_BOOL, options[key], ("stream_options", key))


def _check_min_tokens(body: dict, chat: bool) -> None:
    if "min_tokens" not in body:
        return
    min_tokens = _typed(_INT, body["min_tokens"], ("min_tokens",))
    assert isinstance(min_tokens, int)
    if min_tokens < 0:
        raise VllmRefusal(f"min_tokens must be greater than or equal to 0, got {min_tokens}.", None)
    max_tokens = body.get("max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and min_tokens > max_tokens:
        raise VllmRefusal(f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.", None)
