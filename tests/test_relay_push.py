"""The push relay: what reaches the client from a worker's socket callback, before any task runs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from gateway.relay import StreamRelay


class FakeLeg:
    """A push source whose socket callback the test drives by hand."""

    def stream(self, on_run, on_end) -> None:
        self.on_run, self.on_end = on_run, on_end


class RecordingWriter:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, status, headers) -> None:
        self.calls.append(("start", status, headers))

    def event(self, data: bytes) -> None:
        self.calls.append(("event", data))

    async def finish(self, data: bytes = b"") -> None:
        self.calls.append(("finish", data))


async def test_an_armed_relay_sends_the_head_and_first_event_from_the_callback_itself():
    writer, leg = RecordingWriter(), FakeLeg()
    deadline = SimpleNamespace(client_write_s=30.0, total_at=float("inf"))
    ctx = SimpleNamespace(
        request_id="rid-1", writer=writer, disconnected=False, abort=lambda reason: None, deadline=deadline
    )
    relay = StreamRelay(leg, ctx)
    assert leg.on_run(b"data: 1\n\n") is None  # the worker's first event, read in its callback
    assert [c[0] for c in writer.calls] == ["start", "event"]  # before any task ran
    assert (b"x-request-id", b"rid-1") in writer.calls[0][2] and writer.calls[1][1] == b"data: 1\n\n"
    leg.on_run(b"data: [DONE]\n\n")
    leg.on_end(None)

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    await relay({"type": "http"}, receive, None)  # the ASGI call only finishes the stream
    assert writer.calls[1:] == [("event", b"data: 1\n\n"), ("event", b"data: [DONE]\n\n"), ("finish", b"")]
