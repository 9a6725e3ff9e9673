"""Request bodies as pydantic models with vLLM 0.32's field types, and vLLM's error envelopes.

The field types follow vLLM's CompletionRequest / ChatCompletionRequest for the fields
clients send, so pydantic's lax coercion and type errors are the same as vLLM's (a
`max_tokens` of "5" is accepted, a `temperature` of "hot" is a 400).  Unknown fields are
accepted, as vLLM does.  A type error is rendered as vLLM's handler renders FastAPI's
RequestValidationError: type "Bad Request", param "body.<field>", message
"N validation error(s):" and one line per error.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_REPORTED_ERRORS = 10
MAX_INPUT_CHARS = 200
_BRACKETED = re.compile(r"[\[\]{}()]")
_INTERNAL_LOC = frozenset(
    {
        "function-wrap",
        "function-after",
        "function-before",
        "function-plain",
        "json-or-python",
        "lax-or-strict",
        "chain",
        "default",
        "nullable",
        "tagged-union",
        "union",
        "str",
        "int",
        "float",
        "bool",
        "bytes",
        "list",
        "tuple",
        "dict",
        "set",
        "none",
        "nonetype",
    }
)
ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

NonNegInt = Annotated[int, Field(ge=0)]
StopParam = str | list[str] | None


class ApiError(Exception):
    """An error answered as {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, err_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or ERROR_TYPES.get(status, "InternalServerError")

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": self.status}}


def invalid(message: str, param: str | None = None, value: Any = None) -> ApiError:
    """vLLM's VLLMValidationError: the message ends with (parameter=..., value=...)."""
    extras = [f"{k}={v}" for k, v in (("parameter", param), ("value", value)) if v is not None]
    return ApiError(400, f"{message} ({', '.join(extras)})" if extras else message, param)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Sampling(_Body):
    """Fields shared by completions and chat, typed as vLLM types them."""

    model: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int = 1
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: StopParam = []
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    prompt_logprobs: int | None = None
    kv_transfer_params: dict[str, Any] | None = None
    return_token_ids: bool | None = False


class CompletionBody(_Sampling):
    prompt: list[NonNegInt] | list[list[NonNegInt]] | str | list[str] | None = None
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    suffix: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatBody(_Sampling):
    messages: list[ChatMessage]
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False


def _clean_loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (_BRACKETED.search(str(p)) or str(p).lower() in _INTERNAL_LOC)]
    return ".".join(parts or [str(p) for p in loc])


def _summary(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_INPUT_CHARS else value[:MAX_INPUT_CHARS] + "...[truncated]"
    if isinstance(value, (list, tuple, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = str(value)
    return text if len(text) <= MAX_INPUT_CHARS else text[:MAX_INPUT_CHARS] + "...[truncated]"


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """Render FastAPI-style errors (loc starting with "body") as vLLM does."""
    lines = []
    for err in errors[:MAX_REPORTED_ERRORS]:
        shown = {k: v for k, v in err.items() if k != "url"}
        if "input" in shown:
            shown["input"] = _summary(shown["input"])
        shown["loc"] = _clean_loc(tuple(shown["loc"]))
        if "ctx" in shown:
            shown["ctx"] = {k: (str(v) if isinstance(v, Exception) else v) for k, v in shown["ctx"].items()}
        lines.append(f"  {shown}\n")
    count = len(errors)
    label = "error" if count == 1 else "errors"
    message = f"{count} validation {label}:\n" + "".join(lines)
    if count > MAX_REPORTED_ERRORS:
        message += f"  ...and {count - MAX_REPORTED_ERRORS} more {label}\n"
    return ApiError(400, message.rstrip(), _clean_loc(tuple(errors[0]["loc"])), "Bad Request")


def parse_model(cls: type[_Sampling], body: Any) -> Any:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        errors = [dict(e, loc=("body", *e["loc"])) for e in exc.errors(include_url=False)]
        raise validation_error(errors) from None
