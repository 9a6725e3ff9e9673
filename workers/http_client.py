"""One HTTP/1.1 request over a fresh connection (`Connection: close`): the workers' own small
client, for the simulator's KV pickup and `up`'s warm-up (workers/ does not use the gateway's)."""

from __future__ import annotations

import asyncio

import httptools


class _Response:
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


async def request(
    host: str, port: int, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
) -> tuple[int, bytes]:
    """The status and body of one request; raises OSError, ConnectionError (the connection
    closed before the response ended) or httptools.HttpParserError."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    if body or method == "POST":
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode() + b"\r\n" + body)
        resp = _Response()
        parser = httptools.HttpResponseParser(resp)
        while not resp.complete and (data := await reader.read(65536)):
            parser.feed_data(data)
        if not resp.complete:
            raise ConnectionError("the connection closed before the response ended")
        return parser.get_status_code(), b"".join(resp.body)
    finally:
        writer.close()
