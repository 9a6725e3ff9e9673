"""A worker that streams whatever SSE bytes a test gives it, as fast as the gateway reads them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

from tests.raw_worker import RawWorker

Script = Callable[[], Iterator[bytes]]  # the body of one streamed answer, in writes

MODELS = json.dumps({"object": "list", "data": [{"id": "flood", "object": "model"}]}).encode()
EVENT = b'data: {"choices":[{"index":0,"text":"' + b"x" * 1000 + b'"}]}\n\n'
DONE = b"data: [DONE]\n\n"


def endless() -> Iterator[bytes]:
    """1 KB events until the gateway hangs up."""
    while True:
        yield EVENT * 16


def finite(total_bytes: int) -> Script:
    """About `total_bytes` of 1 KB events, then [DONE]."""

    def script() -> Iterator[bytes]:
        for _ in range(total_bytes // (len(EVENT) * 16)):
            yield EVENT * 16
        yield DONE

    return script


def giant(event_bytes: int) -> Script:
    """One event of `event_bytes` bytes, in 64 KB writes, then [DONE]."""

    def script() -> Iterator[bytes]:
        yield b"data: "
        for _ in range(event_bytes // 65536):
            yield b"x" * 65536
        yield b"\n\n" + DONE

    return script


class SseWorker(RawWorker):
    """Healthy on /health; a 200 event stream made by `script` on any other POST, or with
    `json_bytes`, a JSON completion of about that size."""

    def __init__(self, script: Script, json_bytes: int = 0) -> None:
        super().__init__()
        self.script = script
        self.json_bytes = json_bytes
        self.streaming = 0  # answers being written now
        self.ended = 0  # answers over (written whole, or cut off by the gateway)

    async def answer(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        if head.startswith(b"GET "):
            body = MODELS if head.startswith(b"GET /v1/models ") else b""
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        elif self.json_bytes:
            body = b'{"choices":[{"index":0,"text":"%s"}]}' % (b"x" * self.json_bytes)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        else:
            await self._stream(writer)
        return True

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        self.streaming += 1
        try:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in self.script():
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.streaming -= 1
            self.ended += 1
