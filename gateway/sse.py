"""Server-sent event framing for OpenAI-style streams.

Events are `data: <payload>\\n\\n`. The gateway only ever forwards whole events, so
that an error event it appends can never land inside a half-relayed one.
"""

from __future__ import annotations

DONE = b"data: [DONE]\n\n"
_SEP = b"\n\n"


class EventTooLarge(Exception):
    """An event (or what is not yet one) grew past the framer's limit."""


class EventFramer:
    """Cuts an arbitrary byte stream into runs of complete events.

    Linear in the bytes fed: an unfinished event is kept as a list of parts, and each read is
    searched only for its own separators (and one that straddles the previous read's end).
    An unfinished event over `limit` bytes raises EventTooLarge."""

    __slots__ = ("_parts", "_size", "limit")

    def __init__(self, limit: int = 8 * 1024 * 1024) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.limit = limit

    def feed(self, data: bytes) -> bytes:
        """Return the complete events available so far (possibly several, possibly b"")."""
        parts = self._parts
        if not parts and data.endswith(_SEP):
            return data  # the common case: one read is one or more whole events
        cut = data.rfind(_SEP)
        if cut >= 0:
            cut += len(_SEP)
        elif parts and parts[-1].endswith(b"\n") and data.startswith(b"\n"):
            cut = 1  # the separator straddles the two reads
        else:
            self._keep(data)
            return b""
        run = b"".join((*parts, data[:cut])) if parts else data[:cut]
        parts.clear()
        self._size = 0
        if cut < len(data):
            self._keep(data[cut:])
        return run

    def _keep(self, data: bytes) -> None:
        if data:
            self._parts.append(data)
            self._size += len(data)
            if self._size > self.limit:
                raise EventTooLarge(f"an SSE event exceeds {self.limit} bytes")


def split_events(run: bytes) -> list[bytes]:
    """Split a run of complete events into single events, without their separators."""
    return [e for e in run.split(_SEP) if e]


def event_data(event: bytes) -> bytes | None:
    """The payload of a `data:` event (multi-line data joined by newlines), else None."""
    lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line[5:6] == b" " else line[5:] for line in lines)
