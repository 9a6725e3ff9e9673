"""The push relay: what reaches the client from a worker's socket callback, before any task runs."""

from __future__ import annotations

import asyncio

from gateway.relay import StreamRelay


class FakeLeg:
    """A push source whose socket callback the test drives by hand."""

    def stream(self, on_run, on_end) -> None:
        self.on_run, self.on_end = on_run, on_end


async def test_an_armed_relay_sends_the_head_and_first_event_from_the_callback_itself():
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    leg = FakeLeg()
    relay = StreamRelay(leg, "rid-1", on_disconnect=lambda: None, on_close=lambda: None, send=send)
    assert leg.on_run(b"data: 1\n\n") is None  # the worker's first event, read in its callback
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert (b"x-request-id", b"rid-1") in sent[0]["headers"] and sent[1]["body"] == b"data: 1\n\n"
    leg.on_run(b"data: [DONE]\n\n")
    leg.on_end(None)

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    await relay({"type": "http"}, receive, send)  # the ASGI call only finishes the stream
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n", b"data: [DONE]\n\n", b""]
    assert sent[-1]["more_body"] is False
