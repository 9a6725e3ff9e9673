"""`/v1/responses` as vLLM 0.32 serves it for a plain text model: a response object, or its
stream of named events (`event: <type>` then `data: <json>`, no [DONE]); stored responses
(`store`, default true) kept in memory and fetched back with `GET /v1/responses/{id}`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .engine import completion_text
from .prefix_cache import tokenize
from .protocol import ApiError

if TYPE_CHECKING:
    from .httpserver import HttpConnection
    from .server import SimServer

STORED = 1024  # responses kept for retrieval, oldest dropped first
DEFAULT_OUTPUT_TOKENS = 16


def _prompt(body: dict[str, Any]) -> str:
    value = body.get("input")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for item in value:
            content = item.get("content", "") if isinstance(item, dict) else item
            parts.append(content if isinstance(content, str) else json.dumps(content))
        return "\n".join(parts)
    raise ApiError(400, "'input' is required: a string or a list of input items", "input")


class Responses:
    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.stored: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def create(self, conn: HttpConnection, body: dict[str, Any], model: str) -> None:
        prompt = _prompt(body)
        limit = body.get("max_output_tokens") or DEFAULT_OUTPUT_TOKENS
        if not isinstance(limit, int) or limit < 1:
            raise ApiError(400, "'max_output_tokens' must be a positive integer", "max_output_tokens")
        resp_id = f"resp_{uuid.uuid4().hex[:16]}"
        words = [" " + w for w in completion_text(prompt, 0, limit).split()]
        response = self._response(resp_id, body, model, "".join(words).strip(), len(tokenize(prompt)), len(words))
        if body.get("store", True):
            self.stored[resp_id] = response
            while len(self.stored) > STORED:
                self.stored.popitem(last=False)
        if not body.get("stream"):
            return conn.send_json(200, response)
        self.server._spawn(conn, self._stream(conn, response, words))

    def retrieve(self, conn: HttpConnection, resp_id: str) -> None:
        found = self.stored.get(resp_id)
        if found is None:
            return self._not_found(conn, resp_id)
        conn.send_json(200, found)

    def cancel(self, conn: HttpConnection, resp_id: str) -> None:
        found = self.stored.get(resp_id)
        if found is None:
            return self._not_found(conn, resp_id)
        err = ApiError(400, "Cannot cancel a synchronous response.", "response_id", "invalid_request_error")
        conn.send_json(400, err.to_json())

    @staticmethod
    def _not_found(conn: HttpConnection, resp_id: str) -> None:
        err = ApiError(404, f"Response with id '{resp_id}' not found.", "response_id", "invalid_request_error")
        conn.send_json(404, err.to_json())

    def _response(
        self, resp_id: str, body: dict[str, Any], model: str, text: str, prompt_tokens: int, output_tokens: int
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:16]}",
            "content": [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}],
            "role": "assistant",
            "status": "completed",
            "type": "message",
            "phase": None,
        }
        limit = body.get("max_output_tokens")
        cut = limit is not None and output_tokens >= limit
        return {
            "id": resp_id,
            "created_at": int(time.time()),
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata"),
            "model": model,
            "object": "response",
            "output": [message],
            "parallel_tool_calls": True,
            "temperature": float(body.get("temperature", 1.0)),
            "tool_choice": "none",
            "tools": [],
            "top_p": float(body.get("top_p", 1.0)),
            "background": False,
            "max_output_tokens": limit or self.server.config.max_model_len - prompt_tokens,
            "max_tool_calls": None,
            "previous_response_id": body.get("previous_response_id"),
            "prompt": None,
            "reasoning": None,
            "service_tier": "auto",
            "status": "incomplete" if cut else "completed",
            "text": None,
            "top_logprobs": None,
            "truncation": "disabled",
            "usage": {
                "input_tokens": prompt_tokens,
                "input_tokens_details": {
                    "cached_tokens": 0,
                    "cache_write_tokens": 0,
                    "input_tokens_per_turn": [],
                    "cached_tokens_per_turn": [],
                },
                "output_tokens": output_tokens,
                "output_tokens_details": {
                    "reasoning_tokens": 0,
                    "tool_output_tokens": 0,
                    "output_tokens_per_turn": [],
                    "tool_output_tokens_per_turn": [],
                },
                "total_tokens": prompt_tokens + output_tokens,
            },  # fmt: skip
            "user": None,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "input_messages": None,
            "output_messages": None,
        }

    async def _stream(self, conn: HttpConnection, response: dict[str, Any], words: list[str]) -> None:
        itl = self.server.config.itl_ms / 1000
        message = response["output"][0]
        pending = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
        item = {**message, "status": "in_progress", "content": []}
        part = {"annotations": [], "text": "", "type": "output_text", "logprobs": []}
        ids = {"item_id": message["id"], "output_index": 0}
        seq = iter(range(1 << 30))

        def event(kind: str, **fields: Any) -> bytes:
            data = {**fields, "sequence_number": next(seq), "type": kind}
            return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

        conn.start_stream(200, "text/event-stream; charset=utf-8", first=event("response.created", response=pending))
        conn.write_chunk(event("response.in_progress", response=pending))
        conn.write_chunk(event("response.output_item.added", item=item, output_index=0))
        conn.write_chunk(event("response.content_part.added", content_index=0, part=part, **ids))
        for word in words:
            if itl:
                await asyncio.sleep(itl)
            conn.write_chunk(event("response.output_text.delta", content_index=0, delta=word, logprobs=[], **ids))
        text = message["content"][0]["text"]
        conn.write_chunk(event("response.output_text.done", content_index=0, text=text, logprobs=[], **ids))
        conn.write_chunk(event("response.content_part.done", content_index=0, part=message["content"][0], **ids))
        conn.write_chunk(event("response.output_item.done", item=message, output_index=0))
        conn.end_stream(event("response.completed", response=response))
