"""The vLLM routes besides completions and chat, answered by real vLLM 0.32 and the simulator,
compared by shape as tests/parity_cases.py compares (keys, JSON types, exact `object`,
`type`, `model`... values; a stream as its distinct event shapes).

Two real servers answer them (scripts/record_vllm_api_parity.py): GENERATE cases a generating
server of the tiny Llama with the LoRA adapter `tiny-lora` (scripts/make_tiny_lora.py), POOLING
cases the same model served with `--runner pooling --convert embed` (embeddings) and
`--convert classify`... one runner per server, so each case names the server it needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.parity_cases import MODEL, Case, shape

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vllm_api_parity.json"
ADAPTER = "tiny-lora"
HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class ApiCase:
    case: Case
    server: str  # "generate", "embed" or "classify": the real server that answers it

    @property
    def name(self) -> str:
        return self.case.name


def _g(name: str, path: str, body: dict[str, Any] | str) -> ApiCase:
    return ApiCase(Case(name, path, body), "generate")


def _e(name: str, path: str, body: dict[str, Any] | str) -> ApiCase:
    return ApiCase(Case(name, path, body), "embed")


CASES: list[ApiCase] = [
    _g("tokenize", "/tokenize", {"model": MODEL, "prompt": "hello world"}),
    _g("tokenize_no_model", "/tokenize", {"prompt": "hello world"}),
    _g("tokenize_strs", "/tokenize", {"model": MODEL, "prompt": "hello world", "return_token_strs": True}),
    _g("tokenize_chat", "/tokenize", {"model": MODEL, "messages": HI}),
    _g("tokenize_unknown_model", "/tokenize", {"model": "other", "prompt": "x"}),
    _g("detokenize", "/detokenize", {"model": MODEL, "tokens": [5, 6, 7]}),
    _g("responses", "/v1/responses", {"model": MODEL, "input": "hello", "max_output_tokens": 4}),
    _g("responses_stream", "/v1/responses", {"model": MODEL, "input": "hello", "max_output_tokens": 4, "stream": True}),
    _g("responses_unknown_model", "/v1/responses", {"model": "other", "input": "hello"}),
    _g("lora_completion", "/v1/completions", {"model": ADAPTER, "prompt": "hi there", "max_tokens": 3}),
    _e("embeddings", "/v1/embeddings", {"model": MODEL, "input": "hello world"}),
    _e("embeddings_list", "/v1/embeddings", {"model": MODEL, "input": ["a b", "c d"]}),
    _e("pooling", "/pooling", {"model": MODEL, "input": "hello world"}),
    _e("score", "/score", {"model": MODEL, "queries": "a query", "documents": ["doc one", "doc two"]}),
    _e("score_v1", "/v1/score", {"model": MODEL, "queries": "a query", "documents": ["doc one"]}),
    _e("rerank", "/rerank", {"model": MODEL, "query": "a query", "documents": ["doc one", "doc two"]}),
    _e("rerank_v1", "/v1/rerank", {"model": MODEL, "query": "a query", "documents": ["doc one"], "top_n": 1}),
    _e("rerank_v2", "/v2/rerank", {"model": MODEL, "query": "a query", "documents": ["doc one"]}),
    _e("embed_v2", "/v2/embed", {"model": MODEL, "texts": ["hello world"]}),
    _e("embeddings_unknown_model", "/v1/embeddings", {"model": "other", "input": "x"}),
]
BY_NAME = {c.name: c for c in CASES}


def parse_events(text: str) -> list[Any]:
    """A stream's events: the JSON of each `data:` (named events keep their `event:` as `_event`)."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        named = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
        data = "\n".join(line[len("data: ") :] for line in lines if line.startswith("data: "))
        if not data:
            continue
        event = data if data == "[DONE]" else json.loads(data)
        if named and isinstance(event, dict):
            event = {"_event": named[0], **event}
        events.append(event)
    return events


def to_answer(r: httpx.Response) -> dict[str, Any]:
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        body: Any = parse_events(r.text)
    elif ctype.startswith("application/json"):
        body = r.json()
    else:
        body = r.text
    return {"status": r.status_code, "content_type": ctype.split(";")[0], "body": body}


async def ask_async(
    client: httpx.AsyncClient, base_url: str, case: Case, request_id: str | None = None
) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    if request_id is not None:  # vLLM builds some ids from it: the same on both sides of a comparison
        headers["x-request-id"] = request_id
    return to_answer(await client.post(base_url + case.path, content=case.content(), headers=headers))


def ask(client: httpx.Client, base_url: str, case: Case) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    return to_answer(client.post(base_url + case.path, content=case.content(), headers=headers))


def api_shape(answer: dict[str, Any], case: Case) -> dict[str, Any]:
    """parity_cases.shape, with every event of a stream kept (named events have no middle)."""
    out = shape(answer, case)
    out.pop("middle", None)
    if isinstance(answer["body"], list):
        shapes = {json.dumps(shape({**answer, "body": [e]}, case)["body"], sort_keys=True) for e in answer["body"]}
        out["body"] = sorted(shapes)
    return out


def load_fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())
