"""Server-sent event framing for OpenAI-style streams.

Events are `data: <payload>\\n\\n`. The gateway only ever forwards whole events, so
that an error event it appends can never land inside a half-relayed one.
"""

from __future__ import annotations

DONE = b"data: [DONE]\n\n"
_SEP = b"\n\n"


class EventFramer:
    """Cuts an arbitrary byte stream into runs of complete events."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        """Return the complete events available so far (possibly several, possibly b"")."""
        if not self._tail and data.endswith(_SEP):
            return data  # the common case: one read is one or more whole events
        data = self._tail + data
        cut = data.rfind(_SEP)
        if cut < 0:
            self._tail = data
            return b""
        cut += len(_SEP)
        self._tail = data[cut:]
        return data[:cut]


def split_events(run: bytes) -> list[bytes]:
    """Split a run of complete events into single events, without their separators."""
    return [e for e in run.split(_SEP) if e]


def event_data(event: bytes) -> bytes | None:
    """The payload of a `data:` event (multi-line data joined by newlines), else None."""
    lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line[5:6] == b" " else line[5:] for line in lines)
