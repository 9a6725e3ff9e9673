"""One streaming request: send the body, time every SSE event, keep the text (aiohttp)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Record:
    """What one request did, in monotonic seconds. `token_times` are the arrivals of events that carried
    text; `chunks` counts every data event but [DONE] (llmperf divides its ITL sum by this)."""

    url: str
    start: float
    input_tokens: int
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)
    chunks: int = 0
    text_parts: list[str] = field(default_factory=list)
    usage_output_tokens: int | None = None
    error_code: int | str | None = None
    error_msg: str = ""
    warmup: bool = False
    done: bool = False  # [DONE] seen

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def ok(self) -> bool:
        return self.error_code is None


def _event_text(event: dict[str, Any]) -> str:
    choices = event.get("choices") or ()
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if delta is not None else choice.get("text")
    return text or ""


def _server_error(event: dict[str, Any]) -> tuple[int | str, str] | None:
    err = event.get("error")
    if err is None:
        return None
    if isinstance(err, dict):
        return err.get("code") or err.get("type") or "error", str(err.get("message", err))
    return "error", str(err)


async def _read_stream(resp: aiohttp.ClientResponse, rec: Record) -> None:
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            rec.done = True
            continue
        now = time.monotonic()
        rec.chunks += 1
        event = json.loads(data)
        failed = _server_error(event)
        if failed:
            rec.error_code, rec.error_msg = failed
            return
        text = _event_text(event)
        if text:
            rec.token_times.append(now)
            rec.text_parts.append(text)
        usage = event.get("usage")
        if usage:
            rec.usage_output_tokens = usage.get("completion_tokens")


async def stream_request(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    input_tokens: int,
    timeout_s: float,
) -> Record:
    """POST `body` to `url` and stream the answer; any failure becomes the record's error, never raised."""
    rec = Record(url=url, start=time.monotonic(), input_tokens=input_tokens)
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            if resp.status != 200:
                rec.error_code, rec.error_msg = resp.status, (await resp.text())[:2000]
            else:
                await _read_stream(resp, rec)
    except TimeoutError:
        rec.error_code, rec.error_msg = "timeout", f"no complete answer within {timeout_s:g} s"
    except aiohttp.ClientError as exc:
        rec.error_code, rec.error_msg = type(exc).__name__, str(exc) or repr(exc)
    except (ValueError, UnicodeDecodeError) as exc:
        rec.error_code, rec.error_msg = "bad-stream", f"unparsable event: {exc}"
    rec.end = time.monotonic()
    if rec.ok and not rec.done:
        rec.error_code, rec.error_msg = "truncated", "the stream ended before data: [DONE]"
    elif rec.ok and not rec.token_times:
        rec.error_code, rec.error_msg = "empty", "the stream ended without any text"
    return rec
