"""What a resumed stream needs: which requests can be continued, what the client has so far,
the request that continues it, and the resumed worker's chunks in the first one's shape.

A stream is continued from what reached the client: completions from the prompt's token ids and
the generated ones when the worker returned them (vLLM `return_token_ids`, which the gateway asks
for and hides from a client that did not), else from the prompt plus the text so far; chat from
its messages plus the partial assistant message, left open (vLLM `continue_final_message`,
`add_generation_prompt: false`). Greedy decoding then goes on exactly where it stopped (from
token ids; from text, as long as the text re-tokenizes to the same tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .payload import dumps, load_json
from .requests import ApiRequest
from .sse import event_data, split_events

_COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # vLLM's (and OpenAI's) default for /v1/completions
_TOKEN_FIELDS = ("token_ids", "prompt_token_ids")


def resumable(req: ApiRequest) -> bool:
    """A stream whose generation can be continued elsewhere: one choice of one prompt, no
    logprobs (they would restart), no echo or suffix, no tools (tool-call deltas are parsed
    from the whole output)."""
    body = req.body
    if not req.stream or req.prompt_count > 1 or (body.get("n") or 1) > 1 or (body.get("best_of") or 1) > 1:
        return False
    if body.get("logprobs") or body.get("top_logprobs") or body.get("prompt_logprobs"):
        return False
    if req.route == "chat":
        return not body.get("tools") and not body.get("functions") and not body.get("response_format")
    return not body.get("echo") and body.get("suffix") is None


def with_token_ids(body: dict) -> dict:
    """The body the worker gets: asking for token ids, to continue from them exactly."""
    return body if body.get("return_token_ids") else {**body, "return_token_ids": True}


@dataclass
class Progress:
    """What the client has received of the stream (its one choice)."""

    chat: bool
    client_ids: bool  # the client asked for token ids itself
    id: str | None = None
    created: int | None = None
    text: str = ""
    chunks: int = 0  # content chunks: the token count when ids are missing
    ids: list[int] | None = None  # generated token ids, while every chunk had them
    prompt_ids: list[int] | None = None
    finished: bool = False
    attempt: int = 0  # the current worker's stream: 0 the first, then each resume
    resumed: int = 0  # tokens generated before the current worker's stream
    role_sent: bool = False  # a chat's role chunk reached the client
    _ids_ok: bool = field(default=True, repr=False)

    @property
    def generated(self) -> int:
        return len(self.ids) if self.ids is not None and self._ids_ok else self.chunks

    def rewrite(self, run: bytes) -> bytes:
        """A run of the worker's events as the client gets them; notes what it carries."""
        return b"".join(self._event(e) for e in split_events(run))

    def _event(self, event: bytes) -> bytes:
        data = event_data(event)
        if data is None or data == b"[DONE]" or not data.startswith(b"{"):
            return event + b"\n\n"
        chunk = load_json(data, "worker")
        if self.id is None:
            self.id, self.created = chunk.get("id"), chunk.get("created")
        elif self.attempt:
            chunk["id"], chunk["created"] = self.id, self.created
        if self.chat and (ids := chunk.get("prompt_token_ids")) and self.prompt_ids is None:
            self.prompt_ids = ids
        if not chunk.get("choices"):
            if chunk.get("usage") and self.attempt:
                chunk["usage"] = self._usage(chunk["usage"])
        elif not self._choice(chunk["choices"][0]):
            return b""
        self._hide_ids(chunk)
        return b"data: " + dumps(chunk) + b"\n\n"

    def _choice(self, choice: dict) -> bool:
        """Note one choice's delta; False: nothing of it is for the client (a resumed role chunk)."""
        if self.prompt_ids is None and isinstance(ids := choice.get("prompt_token_ids"), list):
            self.prompt_ids = ids
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if self.role_sent:
                delta.pop("role", None)  # a resumed stream's role chunk: the client has one
            elif delta.get("role"):
                self.role_sent = True
            piece = delta.get("content") or ""
            news = any(v not in (None, "") for v in delta.values())
        else:
            piece = choice.get("text") or ""
            news = bool(piece)
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            self.ids = [*(self.ids or []), *ids]
        elif piece:
            self._ids_ok = False
        if piece:
            self.text += piece
            self.chunks += 1
        if choice.get("finish_reason") is not None:
            self.finished = True
        return news or choice.get("finish_reason") is not None or not self.attempt

    def _usage(self, usage: dict) -> dict:
        """A resumed stream's usage, as the whole generation's: the text it continued from is the
        first stream's completion, not prompt."""
        done = self.resumed
        out = {**usage, "prompt_tokens": max(0, int(usage.get("prompt_tokens") or 0) - done)}
        out["completion_tokens"] = int(usage.get("completion_tokens") or 0) + done
        details = out.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            out["prompt_tokens_details"] = {
                **details,
                "cached_tokens": min(details["cached_tokens"], out["prompt_tokens"]),
            }
        return out

    def _hide_ids(self, chunk: dict) -> None:
        """Token ids the client did not ask for are null, as vLLM sends them then; a resumed
        worker's prompt ids are never the client's."""
        targets = [chunk, *chunk.get("choices", [])]
        for target in targets:
            for key in _TOKEN_FIELDS:
                if key in target and (not self.client_ids or (key == "prompt_token_ids" and self.attempt)):
                    target[key] = None

    def continuation(self, body: dict) -> dict | None:
        """The request that continues the stream (None: nothing is left to generate)."""
        done = self.generated
        out = {k: v for k, v in body.items() if k != "kv_transfer_params"}
        out["return_token_ids"] = True
        if not done and not self.text:
            return out  # nothing generated yet: the request itself
        for key in ("max_tokens", "max_completion_tokens"):
            limit = out.get(key)
            if key == "max_tokens" and limit is None and not self.chat:
                limit = _COMPLETIONS_DEFAULT_MAX_TOKENS
            if isinstance(limit, int):
                if limit - done <= 0:
                    return None
                out[key] = limit - done
        if isinstance(out.get("min_tokens"), int):
            out["min_tokens"] = max(0, out["min_tokens"] - done)
        return self._chat(out) if self.chat else self._completion(out)

    def _completion(self, out: dict) -> dict | None:
        if self.ids is not None and self._ids_ok and self.prompt_ids is not None:
            out["prompt"] = [*self.prompt_ids, *self.ids]
        elif isinstance(out.get("prompt"), str):
            out["prompt"] = out["prompt"] + self.text
        else:
            return None  # token ids in, no ids out: nothing exact to continue from
        return out

    def _chat(self, out: dict) -> dict:
        messages = list(out["messages"])
        last = messages[-1] if messages else {}
        if body_continues(out) and isinstance(last.get("content"), str):
            messages[-1] = {**last, "content": last["content"] + self.text}
        else:
            messages.append({"role": "assistant", "content": self.text})
        out["messages"] = messages
        out["continue_final_message"], out["add_generation_prompt"] = True, False
        return out

    def started_again(self) -> None:
        """A resumed worker's stream follows: its usage and role chunk are rewritten."""
        self.resumed = self.generated
        self.attempt += 1


def body_continues(body: dict) -> bool:
    """The client itself asked to continue its last (assistant) message."""
    return bool(body.get("continue_final_message")) and not body.get("add_generation_prompt", True)
