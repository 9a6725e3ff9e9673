"""The vLLM 0.32 routes besides completions and chat, answered as vLLM answers them (shapes
recorded from a real server: tests/fixtures/vllm_parity.json): tokens, pooling (embeddings,
pooling, classify, score, rerank), stored responses and LoRA adapters loaded at runtime.

The simulator serves every route at once (vLLM serves generation or pooling, by its runner);
vectors are deterministic functions of the input, not meanings.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from .api import prompt_token_ids
from .engine import completion_text
from .prefix_cache import tokenize
from .protocol import ApiError
from .responses import Responses

if TYPE_CHECKING:
    from .httpserver import HttpConnection, Request
    from .server import SimServer

POOLING = {"/v1/embeddings", "/v2/embed", "/pooling", "/classify", "/score", "/v1/score"}
RERANK = {"/rerank", "/v1/rerank", "/v2/rerank"}
PATHS = (
    POOLING
    | RERANK
    | {"/tokenize", "/detokenize", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
    | {"/v1/responses", "/v1/audio/transcriptions", "/v1/audio/translations"}
)
DIM = 128  # the tiny Llama's hidden size
LABELS = ("LABEL_0", "LABEL_1")


def _uid() -> str:
    return uuid.uuid4().hex[:16]


def vector(text: str, dim: int = DIM) -> list[float]:
    """A unit-length stand-in vector of `text` (the same text, the same vector)."""
    raw = hashlib.shake_128(text.encode()).digest(dim)
    values = [(b - 127.5) / 127.5 for b in raw]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


def _usage(tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": None,
            "completion_tokens_details": None}  # fmt: skip


def _texts(value: Any, param: str) -> list[str]:
    """A str, a list of str, token ids or lists of them, as texts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value):
        return [v if isinstance(v, str) else " ".join(map(str, v)) for v in value]
    raise ApiError(400, f"'{param}' must be a string, a list of strings, or token ids", param)


class ExtraRoutes:
    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.config = server.config
        self.adapters: dict[str, str] = {}  # LoRA adapters loaded at runtime: name -> path
        self.responses = Responses(server)

    def serves(self, model: str | None) -> bool:
        return model in (None, self.config.model) or model in self.adapters

    def handle(self, conn: HttpConnection, req: Request) -> None:
        path = req.path
        try:
            if path.startswith("/v1/audio/"):
                return self._audio(conn, req)
            body = json.loads(req.body or b"{}")
            if not isinstance(body, dict):
                raise ApiError(400, "request body must be a JSON object")
            if path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                return self._lora(conn, path, body)
            model = body.get("model")
            if not self.serves(model):
                raise self._unknown(model, path in POOLING | RERANK)
            if path == "/v1/responses":
                return self.responses.create(conn, body, model or self.config.model)
            conn.send_json(200, self._answer(path, body, model or self.config.model))
        except ApiError as err:
            conn.send_json(err.status, err.to_json())
        except ValueError:
            conn.send_json(400, ApiError(400, "request body is not valid JSON").to_json())

    def _unknown(self, model: object, pooling: bool) -> ApiError:
        """vLLM's 404: the pooling routes name no aliases and no param."""
        if pooling:
            return ApiError(404, f"The model `{model}` does not exist.")
        return ApiError(404, f"The model `{model}` does not exist. Valid aliases: {self.config.model}.", "model")

    def _answer(self, path: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        if path == "/tokenize":
            return self._tokenize(body)
        if path == "/detokenize":
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                raise ApiError(400, "'tokens' must be a list of token ids", "tokens")
            return {"prompt": completion_text(" ".join(map(str, tokens)), 0, len(tokens))}
        if path in RERANK:
            return self._rerank(body, model)
        return self._pooled(path, body, model)

    def _tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        if "messages" in body:
            text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            raise ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt")
        tokens = prompt_token_ids(text) if text.strip() else []
        strs = tokenize(text) if body.get("return_token_strs") else None
        return {"count": len(tokens), "max_model_len": self.config.max_model_len, "tokens": tokens, "token_strs": strs}

    def _pooled(self, path: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        created = int(time.time())
        if path in ("/score", "/v1/score"):
            left = _texts(body.get("queries", body.get("data_1", body.get("text_1"))), "queries")
            right = _texts(body.get("documents", body.get("data_2", body.get("text_2"))), "documents")
            pairs = [(left[0] if len(left) == 1 else left[i], r) for i, r in enumerate(right)]
            data = [{"index": i, "object": "score", "score": _score(q, d)} for i, (q, d) in enumerate(pairs)]
            tokens = sum(len(tokenize(q)) + len(tokenize(d)) for q, d in pairs)
            return {"id": f"score-{_uid()}", "object": "list", "created": created, "model": model, "data": data,
                    "usage": _usage(tokens)}  # fmt: skip
        texts = _texts(body.get("input", body.get("texts")), "input")
        tokens = sum(len(tokenize(t)) for t in texts)
        if path == "/v2/embed":
            meta = {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens, "image_tokens": 0}}
            return {
                "id": f"embd-{_uid()}",
                "embeddings": {"float": [vector(t) for t in texts]},
                "texts": texts,
                "meta": meta,
                "response_type": "embeddings_by_type",
            }
        if path == "/classify":
            data = [_classified(i, t) for i, t in enumerate(texts)]
            prefix = "classify"
        elif path == "/pooling":
            data = [{"index": i, "object": "pooling", "data": vector(t)} for i, t in enumerate(texts)]
            prefix = "pooling"
        else:
            data = [{"index": i, "object": "embedding", "embedding": vector(t)} for i, t in enumerate(texts)]
            prefix = "embd"
        return {"id": f"{prefix}-{_uid()}", "object": "list", "created": created, "model": model, "data": data,
                "usage": _usage(tokens)}  # fmt: skip

    def _rerank(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        query = body.get("query")
        docs = body.get("documents")
        if not isinstance(query, str) or not isinstance(docs, list):
            raise ApiError(400, "'query' (a string) and 'documents' (a list) are required", "query")
        texts = [d if isinstance(d, str) else str(d.get("text", "")) for d in docs]
        results = [
            {"index": i, "document": {"text": t, "multi_modal": None}, "relevance_score": _score(query, t)}
            for i, t in enumerate(texts)
        ]
        results.sort(key=lambda r: -float(r["relevance_score"]))  # type: ignore[arg-type]
        top = body.get("top_n")
        if isinstance(top, int) and top > 0:
            results = results[:top]
        tokens = sum(len(tokenize(query)) + len(tokenize(t)) for t in texts)
        return {"id": f"score-{_uid()}", "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "results": results}  # fmt: skip

    def _lora(self, conn: HttpConnection, path: str, body: dict[str, Any]) -> None:
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.", "lora_name")
        if path == "/v1/load_lora_adapter":
            lora_path = body.get("lora_path")
            if not isinstance(lora_path, str) or not lora_path:
                raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.", "lora_path")
            if name in self.adapters:
                raise ApiError(400, f"The lora adapter '{name}' has already been loaded.", "lora_name")
            self.adapters[name] = lora_path
            return conn.send(200, f"Success: LoRA adapter '{name}' added successfully.".encode(), "text/plain")
        if self.adapters.pop(name, None) is None:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        conn.send(200, f"Success: LoRA adapter '{name}' removed successfully.".encode(), "text/plain")

    def _audio(self, conn: HttpConnection, req: Request) -> None:
        content_type = req.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(400, "a multipart/form-data body is required")
        fields = _form_text_fields(req.body, content_type)
        model = fields.get("model")
        if not self.serves(model):
            raise self._unknown(model, False)
        text = completion_text(str(len(req.body)), 0, 4).strip()
        if fields.get("stream", "").lower() == "true":
            return self._audio_stream(conn, model or self.config.model, text)
        if fields.get("response_format") in ("text", "srt", "vtt"):
            return conn.send(200, text.encode(), "text/plain; charset=utf-8")
        conn.send_json(200, {"text": text, "usage": {"type": "duration", "seconds": 1}})

    @staticmethod
    def _audio_stream(conn: HttpConnection, model: str, text: str) -> None:
        """vLLM's transcription stream: one `transcription.chunk` per token, then [DONE]."""
        head = {"id": f"trsc-{_uid()}", "object": "transcription.chunk", "created": int(time.time()), "model": model}
        words = text.split()
        events = []
        for i, word in enumerate(words):
            choice = {"delta": {"content": " " + word}, "finish_reason": "stop" if i == len(words) - 1 else None}
            events.append({**head, "choices": [{**choice, "stop_reason": None}]})
        body = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
        conn.start_stream(200, "text/event-stream; charset=utf-8", first=body)
        conn.end_stream(b"data: [DONE]\n\n")

    def model_cards(self, created: int) -> list[dict[str, Any]]:
        """The adapters' /v1/models entries: their parent is the served model."""
        return [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": path,
                "parent": self.config.model,
                "max_model_len": None,
                "permission": [],
            }  # fmt: skip
            for name, path in self.adapters.items()
        ]


def _score(a: str, b: str) -> float:
    va, vb = vector(a), vector(b)
    return (sum(x * y for x, y in zip(va, vb, strict=True)) + 1) / 2


def _classified(index: int, text: str) -> dict[str, Any]:
    p = _score(text, "positive")
    return {"index": index, "label": LABELS[p >= 0.5], "probs": [1 - p, p], "num_classes": 2}


def _form_text_fields(raw: bytes, content_type: str) -> dict[str, str]:
    boundary = content_type.split("boundary=", 1)[-1].strip('"').encode()
    fields = {}
    for part in raw.split(b"--" + boundary)[1:]:
        head, _, value = part.partition(b"\r\n\r\n")
        if b"filename=" in head or b'name="' not in head:
            continue
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value.removesuffix(b"\r\n").decode(errors="replace")
    return fields
