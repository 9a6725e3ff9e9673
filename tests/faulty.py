"""A worker that misbehaves on purpose: healthy on /health, broken on the API routes."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

Behaviour = Literal[
    "silent", "headers-then-silent", "headers-then-close", "garbage-sse", "garbage-json", "close", "scripted"
]

MODELS = json.dumps({"object": "list", "data": [{"id": "sim-model", "object": "model"}]}).encode()


class FaultyWorker:
    def __init__(self, behaviour: Behaviour, script: list[bytes] | None = None, gap_s: float = 0.0) -> None:
        """`scripted`: the API answer is `script`'s parts, written one by one `gap_s` apart; an
        empty part is a pause (the worker then waits for ever)."""
        self.behaviour = behaviour
        self.script = script or []
        self.gap_s = gap_s
        self.server: asyncio.Server | None = None
        self.api_requests = 0
        self._handlers: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> FaultyWorker:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
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
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

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
