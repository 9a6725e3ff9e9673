"""From a request body to a GenRequest, with vLLM 0.32's checks in vLLM's order.

Order (as a client sees it on vLLM): JSON and pydantic types (FastAPI), the request
model's before-validators (logprobs, stream_options), the served model name (404), the
prompt, max_tokens against the context, tokenization (lone surrogates), the prompt
length, then SamplingParams' range checks.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from .engine import content_text, count_tokens, id_word, render_chat
from .protocol import ApiError, ChatBody, CompletionBody, invalid, parse_model, validation_error

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
DEFAULT_TEMPERATURE = 1.0


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
    continuous_usage: bool = False
    stop: list[str] = field(default_factory=list)
    include_stop: bool = False
    logprobs: int | None = None  # completions: logprobs; chat: top_logprobs when logprobs=true
    echo: bool = False
    cached_tokens: int = 0  # prompt tokens found in the prefix cache (set by the prefill)
    report_cached: bool = False  # --enable-prompt-tokens-details
    return_token_ids: bool = False  # token ids with every choice (and the prompt's, first)
    kv_settled: bool = False  # a remote prefill's KV was read, or is not this worker's to free

    @property
    def remote_kv(self) -> dict[str, Any] | None:
        """A remote prefill's kv_transfer_params, when this request is to read its KV (decode side)."""
        kv = self.kv_params
        return kv if kv is not None and kv.get("do_remote_prefill") else None

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


def parse_body(raw: bytes) -> Any:
    """JSON decode errors as FastAPI reports them (loc = body, character position)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise validation_error(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    except UnicodeDecodeError as exc:
        raise validation_error(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.start),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.reason},
                }
            ]
        ) from None


def _before_validators(body: dict[str, Any], chat: bool) -> None:
    """The checks vLLM runs on the raw dict before types (mode="before" validators)."""
    for name in ("prompt_logprobs",) if chat else ("prompt_logprobs", "logprobs"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise invalid(f"`{name}` must be an integer.", name, value)
    if not chat and (lp := body.get("logprobs")) is not None and lp < 0 and lp != -1:
        raise invalid("`logprobs` must be a positive value or -1.", "logprobs", lp)
    if chat and body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise invalid("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
    if chat and body.get("continue_final_message") and body.get("add_generation_prompt"):
        raise invalid("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    if body.get("stream_options") and not body.get("stream"):
        raise invalid("Stream options can only be defined when `stream=True`.", "stream_options")


def _prompts(req: CompletionBody) -> list[str]:
    prompt = req.prompt
    if prompt is None or prompt == "":
        raise invalid("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ApiError(400, "You must pass at least one prompt")
    if isinstance(prompt[0], int):
        return [_token_prompt(prompt)]
    if isinstance(prompt[0], list):
        return [_token_prompt(p) for p in prompt]
    return list(prompt)


def _token_prompt(ids: list[int]) -> str:
    """A token-id prompt as sim text: the word of each id (engine.id_word), len(ids) tokens."""
    return " ".join(id_word(i) for i in ids)


def _chat_prompt(req: ChatBody) -> str:
    if not req.messages:
        raise ApiError(400, "Cannot apply chat template to an empty conversation. Provide at least one message.")
    messages = [m.model_dump() for m in req.messages]
    if not req.continue_final_message:
        return render_chat(messages)
    if messages[-1].get("role") != "assistant":
        raise ApiError(400, "continue_final_message is set but the final message is not an assistant message.")
    # The final (assistant) message is left open: its text continues the prompt, so a partial
    # reply generated for the other messages goes on where it stopped (engine.choice_seed).
    head = render_chat(messages[:-1])
    return head + content_text(messages[-1].get("content"))


def _check_encodable(prompts: list[str]) -> None:
    """A lone UTF-16 surrogate cannot be tokenized: vLLM answers the tokenizer's TypeError."""
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(
                400, "TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]"
            ) from None


def _check_max_tokens(name: str, value: int | None, max_model_len: int) -> None:
    if value is not None and value > max_model_len:
        raise invalid(
            f"{name}={value} cannot be greater than max_model_len={max_model_len}. Please request fewer output tokens.",
            name,
            value,
        )


def _check_prompt_len(prompt_tokens: list[int], max_model_len: int) -> None:
    for count in prompt_tokens:
        if count > max_model_len:
            shown = min(count, max_model_len + 1)  # vLLM's tokenizer truncates to max+1
            qualifier = "at least " if shown == max_model_len + 1 else ""
            raise invalid(
                f"This model's maximum context length is {max_model_len} tokens. "
                f"However, your prompt contains {qualifier}{shown} input tokens, which "
                "exceeds this limit even without any output tokens. Please reduce "
                "the length of the input prompt.",
                "input_tokens",
                shown,
            )


def _check_sampling(req: CompletionBody | ChatBody, max_tokens: int, logprobs: int | None) -> None:
    """SamplingParams._verify_args, in vLLM's order."""
    if req.n < 1:
        raise ApiError(400, f"n must be at least 1, got {req.n}.")
    presence = req.presence_penalty if req.presence_penalty is not None else 0.0
    frequency = req.frequency_penalty if req.frequency_penalty is not None else 0.0
    repetition = req.repetition_penalty if req.repetition_penalty is not None else 1.0
    temperature = req.temperature if req.temperature is not None else DEFAULT_TEMPERATURE
    top_p = req.top_p if req.top_p is not None else 1.0
    top_k = req.top_k if req.top_k is not None else 0
    min_p = req.min_p if req.min_p is not None else 0.0
    if not -2.0 <= presence <= 2.0:
        raise ApiError(400, f"presence_penalty must be in [-2, 2], got {presence}.")
    if not -2.0 <= frequency <= 2.0:
        raise ApiError(400, f"frequency_penalty must be in [-2, 2], got {frequency}.")
    if not math.isfinite(repetition) or repetition <= 0.0:
        raise ApiError(400, f"repetition_penalty must be greater than zero, got {repetition}.")
    if not math.isfinite(temperature):
        raise invalid(f"temperature must be a finite number, got {temperature}.", "temperature", temperature)
    if temperature < 0.0:
        raise invalid(f"temperature must be non-negative, got {temperature}.", "temperature", temperature)
    if temperature > 2.0:
        raise invalid(f"temperature must be in [0, 2], got {temperature}.", "temperature", temperature)
    if not 0.0 < top_p <= 1.0:
        raise invalid(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    if top_k < -1:
        raise ApiError(400, f"top_k must be 0 (disable), or at least 1, got {top_k}.")
    if not 0.0 <= min_p <= 1.0:
        raise ApiError(400, f"min_p must be in [0, 1], got {min_p}.")
    if max_tokens < 1:
        raise invalid(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens)
    if req.min_tokens < 0:
        raise ApiError(400, f"min_tokens must be greater than or equal to 0, got {req.min_tokens}.")
    if req.min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {req.min_tokens}.")
    if any(not s for s in _stops(req.stop)):
        raise ApiError(400, "stop cannot contain an empty string.")
    if temperature < 1e-5 and req.n > 1:
        raise invalid(f"n must be 1 when using greedy sampling, got {req.n}.")
    if logprobs is not None and logprobs > MAX_LOGPROBS:
        raise invalid(
            f"Requested sample logprobs of {logprobs}, which is greater than max allowed: {MAX_LOGPROBS}",
            "logprobs",
            logprobs,
        )


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _kv_params(kv: dict[str, Any] | None) -> dict[str, Any] | None:
    if kv is None or not (kv.get("do_remote_decode") or kv.get("do_remote_prefill")):
        return None
    return kv


def validate_body(body: Any, chat: bool) -> ChatBody | CompletionBody:
    """What vLLM checks before its serving code runs (FastAPI, pydantic and the request model's
    validators): a refusal here frees no remote prefill's KV."""
    if not isinstance(body, dict):  # FastAPI reads the body model from attributes
        raise validation_error(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": body,
                }
            ]
        )
    _before_validators(body, chat)
    model: ChatBody | CompletionBody = parse_model(ChatBody if chat else CompletionBody, body)
    return model


def remote_kv_of(req: ChatBody | CompletionBody) -> dict[str, Any] | None:
    """The remote prefill's kv_transfer_params of a validated request (None: it reads no KV)."""
    kv = req.kv_transfer_params
    return kv if kv is not None and kv.get("do_remote_prefill") else None


def parse_request(body: Any, chat: bool, id_header: str | None, served_model: str, max_model_len: int) -> GenRequest:
    return build_request(validate_body(body, chat), chat, id_header, served_model, max_model_len)


def build_request(
    req: ChatBody | CompletionBody, chat: bool, id_header: str | None, served_model: str, max_model_len: int
) -> GenRequest:
    """The serving layer's checks (vLLM's create_completion / create_chat_completion): a refusal
    here frees a remote prefill's KV (vLLM's _with_kv_transfer_rejection_cleanup)."""
    if req.model and req.model != served_model:
        raise ApiError(404, f"The model `{req.model}` does not exist. Valid aliases: {served_model}.", "model")
    prompts = [_chat_prompt(req)] if isinstance(req, ChatBody) else _prompts(req)
    if isinstance(req, ChatBody):
        name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    else:
        name, requested, logprobs = "max_tokens", req.max_tokens, req.logprobs
    _check_max_tokens(name, requested, max_model_len)
    _check_encodable(prompts)
    prompt_tokens = [count_tokens(p) for p in prompts]
    _check_prompt_len(prompt_tokens, max_model_len)
    # vLLM clamps max_tokens to what the context has left (get_max_tokens).
    room = max_model_len - max(prompt_tokens)
    max_tokens = min(room, requested) if requested is not None else room
    _check_sampling(req, max_tokens if requested is None or requested >= 1 else requested, logprobs)
    opts = req.stream_options
    return GenRequest(
        chat=chat,
        base_id=id_header or uuid.uuid4().hex[:16],
        id_header=id_header,
        model=served_model,
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        n=req.n,
        max_tokens=max_tokens,
        stream=bool(req.stream),
        include_usage=bool(opts and opts.include_usage),
        continuous_usage=bool(opts and opts.include_usage and opts.continuous_usage_stats),
        kv_params=_kv_params(req.kv_transfer_params),
        stop=_stops(req.stop),
        include_stop=req.include_stop_str_in_output,
        logprobs=logprobs,
        echo=bool(getattr(req, "echo", False)) and not chat,
        return_token_ids=bool(req.return_token_ids),
    )
