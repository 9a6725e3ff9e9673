"""W3C trace context (`traceparent`, `tracestate`) and what one request's spans are made of.

Ids are made up front, as the request goes, so that each leg's `traceparent` names the span
that will describe it; the spans themselves are built from the recorded times once the
request is over (gateway/telemetry/otlp.py). Per leg attempt this costs one random number,
one small object and one header line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACESTATE = re.compile(rb"[\x20-\x7e]{1,512}")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def new_span_id() -> str:
    # Ids need to be unique, not secret: no getrandom syscall on the hot path.
    return f"{random.getrandbits(64) or 1:016x}"


def new_trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"


def parse_traceparent(value: bytes | None) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid `traceparent`, else None (W3C: a header
    that does not parse is ignored and a new trace starts)."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, parent, flags, rest = (g.decode("ascii") if g else "" for g in m.groups())
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace_id, parent, bool(int(flags, 16) & 1)


def passthrough(headers: Mapping[bytes, bytes]) -> tuple[bytes, str | None]:
    """The client's trace context as header lines for the workers, unchanged (tracing off),
    and its trace id."""
    parent = headers.get(b"traceparent")
    given = parse_traceparent(parent)
    if parent is None or given is None:
        return b"", None
    out = b"traceparent: " + parent.strip() + b"\r\n"
    state = headers.get(b"tracestate")
    if state and _TRACESTATE.fullmatch(state):
        out += b"tracestate: " + state + b"\r\n"
    return out, given[0]


class Attempt:
    """One leg's call to one endpoint: a span of its own, parent of the worker's spans."""

    __slots__ = ("role", "endpoint", "span_id", "start", "end", "outcome", "usage")

    def __init__(self, role: str, endpoint: str, span_id: str, start: float) -> None:
        self.role, self.endpoint, self.span_id, self.start = role, endpoint, span_id, start
        self.end: float | None = None
        self.outcome = ""
        self.usage: dict | None = None


class SpanLog:
    """One request's trace: its ids, its parent (the client's span, if any), its leg attempts."""

    __slots__ = ("trace_id", "span_id", "parent_id", "sampled", "_head", "_state", "attempts")

    def __init__(self, headers: Mapping[bytes, bytes], sample: float) -> None:
        given = parse_traceparent(headers.get(b"traceparent"))
        self.parent_id: str | None
        if given is not None:
            self.trace_id, self.parent_id, self.sampled = given
        else:
            self.trace_id, self.parent_id = new_trace_id(), None
            self.sampled = sample >= 1.0 or random.random() < sample
        self.span_id = new_span_id()  # the request's own span
        self._head = b"traceparent: 00-%s-" % self.trace_id.encode("ascii")
        flags = b"-01\r\n" if self.sampled else b"-00\r\n"
        state = headers.get(b"tracestate") if given is not None else None
        self._state = flags + (b"tracestate: " + state + b"\r\n" if state and _TRACESTATE.fullmatch(state) else b"")
        self.attempts: list[Attempt] = []

    def attempt(self, role: str, endpoint: str, now: float) -> bytes:
        """A leg's attempt starts: an earlier one of the same role that is still open failed
        (this one is its retry or replay). Returns the header lines that make it the parent."""
        for a in reversed(self.attempts):
            if a.role == role:
                if a.end is None:
                    a.end, a.outcome = now, "failed"
                break
        a = Attempt(role, endpoint, new_span_id(), now)
        self.attempts.append(a)
        return self._head + a.span_id.encode("ascii") + self._state

    def done(self, role: str, now: float, usage: dict | None) -> None:
        """The last attempt of `role` ended cleanly."""
        for a in reversed(self.attempts):
            if a.role == role:
                a.end, a.outcome, a.usage = now, "ok", usage
                return
