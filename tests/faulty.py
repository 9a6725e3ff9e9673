"""A worker that misbehaves on purpose: healthy on /health, broken on the API routes."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from tests.raw_worker import RawWorker

Behaviour = Literal[
    "silent", "headers-then-silent", "headers-then-close", "garbage-sse", "garbage-json", "close", "scripted"
]

MODELS = json.dumps({"object": "list", "data": [{"id": "sim-model", "object": "model"}]}).encode()


class FaultyWorker(RawWorker):
    def __init__(self, behaviour: Behaviour, script: list[bytes] | None = None, gap_s: float = 0.0) -> None:
        """`scripted`: the API answer is `script`'s parts, written one by one `gap_s` apart; an
        empty part is a pause (the worker then waits for ever)."""
        super().__init__()
        self.behaviour = behaviour
        self.script = script or []
        self.gap_s = gap_s
        self.api_requests = 0

    async def answer(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        path = head.split(b" ")[1]
        if path == b"/health":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        elif path == b"/metrics":  # the gateway's load poll: no report, and not an API request
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        elif path == b"/v1/models":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(MODELS), MODELS))
        else:
            self.api_requests += 1
            await self._misbehave(writer)
            return False
        return True

    async def _misbehave(self, writer: asyncio.StreamWriter) -> None:
        if self.behaviour == "scripted":
            for part in self.script:
                if not part:
                    await asyncio.sleep(3600)
                writer.write(part)
                await writer.drain()
                if self.gap_s:
                    await asyncio.sleep(self.gap_s)
        elif self.behaviour == "silent":
            await asyncio.sleep(3600)
        elif self.behaviour == "headers-then-silent":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(3600)
        elif self.behaviour == "headers-then-close":  # a worker that dies before its first token
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        elif self.behaviour == "garbage-sse":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            body = b"this is not server-sent events\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        elif self.behaviour == "garbage-json":
            body = b"<html>surprise</html>"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        await writer.drain()
