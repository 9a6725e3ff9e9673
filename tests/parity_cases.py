"""Requests answered by both real vLLM 0.32 and the simulated worker, and how answers compare.

scripts/record_vllm_parity.py sends CASES to a real vLLM server and writes
tests/fixtures/vllm_parity.json; tests/test_sim_parity.py sends them to the simulator and
compares `shape()` of both answers; tests/real/test_sim_parity_real.py checks the fixture
against a live vLLM.  Both servers serve the model name MODEL with MAX_MODEL_LEN.

A shape keeps what a client can rely on and drops what a model decides: the keys of every
object, the JSON type of every value, the exact value of the keys in EXACT, ids and
fingerprints as patterns, error messages exactly (or with digits masked where a count of
tokens is in them), and for a stream the sequence of distinct event shapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MODEL = "tiny"
MAX_MODEL_LEN = 512
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vllm_parity.json"
EXACT = frozenset({"object", "finish_reason", "role", "type", "param", "code", "model"})
_ID = re.compile(r"^(cmpl|chatcmpl)-[0-9a-f]{16}$")
_FINGERPRINT = re.compile(r"^vllm-[0-9.]+-[0-9a-f]{8}$")
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any] | str  # a str is sent as it is (bad JSON, lone surrogates)
    mask_digits: bool = False  # the error message holds token counts, which differ
    loose_error: bool = False  # only status, type and code compare (documented gap)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def content(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else json.dumps(self.body).encode()


def _c(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hi there", "max_tokens": 3, **kw}


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, "max_tokens": 3, **kw}


CASES: list[Case] = [
    # -- answers -------------------------------------------------------------------
    Case("completion", COMPLETIONS, _c()),
    Case("completion_no_model", COMPLETIONS, {"prompt": "hi", "max_tokens": 2}),
    Case("completion_n2", COMPLETIONS, _c(n=2)),
    Case("completion_best_of", COMPLETIONS, _c(best_of=2)),
    Case("completion_prompt_list", COMPLETIONS, _c(prompt=["a", "b"])),
    Case("completion_token_ids", COMPLETIONS, _c(prompt=[1, 2, 3])),
    Case("completion_unknown_field", COMPLETIONS, _c(foo=1)),
    Case("completion_max_tokens_str", COMPLETIONS, _c(max_tokens="2")),
    Case("completion_max_tokens_null", COMPLETIONS, _c(max_tokens=None, stop=[" "])),
    Case("completion_echo", COMPLETIONS, _c(echo=True)),
    Case("completion_logprobs", COMPLETIONS, _c(logprobs=2)),
    Case("completion_stop", COMPLETIONS, _c(max_tokens=8, stop=[" "])),
    Case("completion_stream", COMPLETIONS, _c(stream=True)),
    Case("completion_stream_usage", COMPLETIONS, _c(stream=True, stream_options={"include_usage": True})),
    Case(
        "completion_stream_continuous_usage",
        COMPLETIONS,
        _c(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}),
    ),
    Case("completion_stream_n2", COMPLETIONS, _c(stream=True, n=2)),
    Case("completion_stream_echo", COMPLETIONS, _c(stream=True, echo=True)),
    Case("completion_stream_logprobs", COMPLETIONS, _c(stream=True, logprobs=1)),
    Case("completion_stream_stop", COMPLETIONS, _c(stream=True, max_tokens=8, stop=[" "])),
    Case("chat", CHAT, _chat()),
    Case("chat_n2", CHAT, _chat(n=2)),
    Case("chat_max_completion_tokens", CHAT, _chat(max_tokens=None, max_completion_tokens=2)),
    Case("chat_unknown_role", CHAT, _chat(messages=[{"role": "wizard", "content": "hi"}])),
    Case("chat_logprobs", CHAT, _chat(logprobs=True, top_logprobs=2)),
    Case("chat_logprobs_no_top", CHAT, _chat(logprobs=True)),
    Case("chat_stop", CHAT, _chat(max_tokens=8, stop=" ")),
    Case("chat_stream", CHAT, _chat(stream=True)),
    Case("chat_stream_usage", CHAT, _chat(stream=True, stream_options={"include_usage": True})),
    Case("chat_stream_n2", CHAT, _chat(stream=True, n=2)),
    Case("chat_stream_logprobs", CHAT, _chat(stream=True, logprobs=True, top_logprobs=1)),
    # -- errors --------------------------------------------------------------------
    Case("bad_json", COMPLETIONS, "{not json"),
    Case("body_not_object", COMPLETIONS, "[1, 2]"),
    Case("unknown_model", COMPLETIONS, _c(model="other")),
    Case("no_prompt", COMPLETIONS, {"model": MODEL, "max_tokens": 3}),
    Case("empty_prompt", COMPLETIONS, _c(prompt="")),
    Case("empty_prompt_list", COMPLETIONS, _c(prompt=[])),
    Case("prompt_int", COMPLETIONS, _c(prompt=5)),
    Case("model_int", COMPLETIONS, _c(model=5)),
    Case("temperature_str", COMPLETIONS, _c(temperature="hot")),
    Case("temperature_negative", COMPLETIONS, _c(temperature=-1)),
    Case("temperature_over_2", COMPLETIONS, _c(temperature=3)),
    Case("top_p_zero", COMPLETIONS, _c(top_p=0)),
    Case("top_k_negative", COMPLETIONS, _c(top_k=-5)),
    Case("min_p_over_1", COMPLETIONS, _c(min_p=3)),
    Case("presence_penalty", COMPLETIONS, _c(presence_penalty=3)),
    Case("frequency_penalty", COMPLETIONS, _c(frequency_penalty=-3)),
    Case("repetition_penalty", COMPLETIONS, _c(repetition_penalty=0)),
    Case("max_tokens_zero", COMPLETIONS, _c(max_tokens=0)),
    Case("max_tokens_negative", COMPLETIONS, _c(max_tokens=-1)),
    Case("max_tokens_word", COMPLETIONS, _c(max_tokens="five")),
    Case("max_tokens_over_context", COMPLETIONS, _c(max_tokens=5000)),
    Case("min_tokens_over_max", COMPLETIONS, _c(min_tokens=5)),
    Case("min_tokens_negative", COMPLETIONS, _c(min_tokens=-1)),
    Case("n_zero", COMPLETIONS, _c(n=0)),
    Case("greedy_n2", COMPLETIONS, _c(temperature=0, n=2)),
    Case("seed_huge", COMPLETIONS, _c(seed=10**23)),
    Case("stop_int", COMPLETIONS, _c(stop=5)),
    Case("stop_empty", COMPLETIONS, _c(stop=[""])),
    Case("stream_str", COMPLETIONS, _c(stream="yes")),
    Case("stream_options_without_stream", COMPLETIONS, _c(stream_options={"include_usage": True})),
    Case("logprobs_over_20", COMPLETIONS, _c(logprobs=50)),
    Case("logprobs_negative", COMPLETIONS, _c(logprobs=-2)),
    Case("logprobs_str", COMPLETIONS, _c(logprobs="x")),
    Case("prompt_over_context", COMPLETIONS, _c(prompt=" ".join(["word"] * 600)), mask_digits=True),
    Case("lone_surrogate", COMPLETIONS, '{"model": "tiny", "prompt": "a \\udc00 b", "max_tokens": 2}'),
    Case(
        "lone_surrogate_chat",
        CHAT,
        '{"model": "tiny", "messages": [{"role": "user", "content": "a \\ud800"}], "max_tokens": 2}',
    ),
    Case("chat_no_messages", CHAT, {"model": MODEL, "max_tokens": 2}),
    Case("chat_empty_messages", CHAT, _chat(messages=[])),
    Case(
        "chat_message_without_role",
        CHAT,
        _chat(messages=[{"content": "hi"}]),
        loose_error=True,
        note="vLLM lists one error per message type of its union (11); the simulator one",
    ),
    Case("chat_top_logprobs_without_logprobs", CHAT, _chat(top_logprobs=2)),
    Case("chat_top_logprobs_over_20", CHAT, _chat(logprobs=True, top_logprobs=30)),
    Case("chat_max_tokens_over_context", CHAT, _chat(max_tokens=600)),
    Case("chat_max_completion_tokens_over_context", CHAT, _chat(max_completion_tokens=600)),
]


# -- recording and shapes -----------------------------------------------------------


def _parse_sse(text: str) -> list[Any]:
    events: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


HEADERS = {"content-type": "application/json"}


def to_answer(r: httpx.Response) -> dict[str, Any]:
    """One case's answer as it is stored in the fixture."""
    ctype = r.headers.get("content-type", "")
    body: Any = _parse_sse(r.text) if ctype.startswith("text/event-stream") else r.json()
    return {"status": r.status_code, "content_type": ctype.split(";")[0], "body": body}


def ask(client: httpx.Client, base_url: str, case: Case) -> dict[str, Any]:
    return to_answer(client.post(base_url + case.path, content=case.content(), headers=HEADERS))


async def ask_async(client: httpx.AsyncClient, base_url: str, case: Case) -> dict[str, Any]:
    return to_answer(await client.post(base_url + case.path, content=case.content(), headers=HEADERS))


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str"}.get(type(value), type(value).__name__)


def _shape(value: Any, key: str | None, case: Case) -> Any:
    if isinstance(value, dict):
        if key == "top_logprobs_entry" and "logprob" not in value:
            return {"<token>": "float"}  # completions: {token: logprob}; the tokens differ
        return {k: _shape(v, k, case) for k, v in sorted(value.items())}
    if isinstance(value, list) and key in ("bytes", "prompt_token_ids"):
        return "list[int]" if all(isinstance(b, int) for b in value) else "list[?]"
    if isinstance(value, list):
        inner = "top_logprobs_entry" if key == "top_logprobs" else key
        return ["list", _shape(value[-1], inner, case)] if value else ["list"]
    if key == "id" and isinstance(value, str) and _ID.match(value):
        return value.split("-")[0] + "-<16 hex>"
    if key == "system_fingerprint" and isinstance(value, str) and _FINGERPRINT.match(value):
        return "vllm-<version>-<8 hex>"
    if key == "stop_reason" and isinstance(value, str):
        return value
    if key == "message" and isinstance(value, str):
        if case.loose_error:
            return "str"
        return re.sub(r"\d+", "N", value) if case.mask_digits else value
    if key in EXACT:
        return value
    return _scalar(value)


def _is_middle(event: Any) -> bool:
    """A token chunk that is neither a choice's first (role) nor its last chunk."""
    choices = event.get("choices") if isinstance(event, dict) else None
    return bool(choices) and all(c.get("finish_reason") is None and "role" not in c.get("delta", {}) for c in choices)


def shape(answer: dict[str, Any], case: Case) -> dict[str, Any]:
    """The comparable shape of one answer; a stream's middle chunks are kept apart in "middle"
    (vLLM merges tokens into fewer chunks when the server falls behind, so a short stream
    can have none)."""
    body = answer["body"]
    out: dict[str, Any] = {"status": answer["status"], "content_type": answer["content_type"]}
    if isinstance(body, list):
        events: list[Any] = []
        middle: list[Any] = []
        for event in body:
            target = middle if _is_middle(event) else events
            s = event if event == "[DONE]" else _shape(event, None, case)
            if s not in target:
                target.append(s)
        out.update(body=events, middle=middle)
    else:
        body_shape = _shape(body, None, case)
        if case.loose_error and "error" in body_shape:
            body_shape["error"]["param"] = "<param>"
        out["body"] = body_shape
    return out


def comparable(a: dict[str, Any], b: dict[str, Any], case: Case) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shapes of two answers to `case`, ready for ==: middle chunks compare when both have them."""
    sa, sb = shape(a, case), shape(b, case)
    if not sa.get("middle") or not sb.get("middle"):
        sa.pop("middle", None)
        sb.pop("middle", None)
    return sa, sb


def load_fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())
