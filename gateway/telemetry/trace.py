"""One request's timeline, filled in by the request path and read once at its end.

The request path calls a handful of methods, each at most once per leg; nothing here runs
per relayed chunk. A stream's inter-token latency is derived at its end from three numbers
the leg has anyway: the time of its first event, the time of its end and its token count.
"""

from __future__ import annotations

import json
import time

from .spans import SpanLog

_now = time.monotonic


class Trace:
    """What the access log line and the per-request metrics of one request are made of."""

    __slots__ = (
        "request_id",
        "route",
        "model",
        "pool",
        "start",
        "admitted_at",
        "endpoints",
        "prefill_sent",
        "prefill_done",
        "first_event",
        "decode_first",
        "end",
        "gaps",
        "prompt_tokens",
        "completion_tokens",
        "retries",
        "replays",
        "status",
        "outcome",
        "stream",
        "spans",
        "trace_id",
    )

    def __init__(self, request_id: str, route: str) -> None:
        self.request_id = request_id
        self.route = route
        self.model = ""
        self.pool = ""
        self.start = _now()
        self.admitted_at: float | None = None
        self.endpoints: dict[str, str] = {}  # role -> the endpoint of its last attempt
        self.prefill_sent: float | None = None
        self.prefill_done: float | None = None
        self.first_event: float | None = None  # first event of any streamed leg: what the client sees first
        self.decode_first: float | None = None  # first event of the decode (or replica) leg
        self.end: float | None = None  # the decode (or replica) leg's clean end
        self.gaps = 0  # token gaps between decode_first and end
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.retries = 0
        self.replays = 0
        self.status = 0
        self.outcome = ""
        self.stream = False
        self.spans: SpanLog | None = None  # set when tracing is on (Tracing.join)
        self.trace_id: str | None = None  # the W3C trace it belongs to: the gateway's, or the client's passed on

    # Called by the request path --------------------------------------------------------

    def admitted(self) -> None:
        self.admitted_at = _now()

    def parsed(self, model: str, stream: bool) -> None:
        """The request's model (as the client wrote it) and whether it streams."""
        self.model, self.stream = model, stream

    def routed(self, pool: str) -> None:
        self.pool = pool

    def leg_sent(self, role: str, endpoint: str) -> bytes:
        """A leg's request goes to `endpoint` (again, on a retry); returns the trace context
        header lines for it (empty when tracing is off)."""
        self.endpoints[role] = endpoint
        now = _now()
        if role == "prefill" and self.prefill_sent is None:
            self.prefill_sent = now
        return b"" if self.spans is None else self.spans.attempt(role, endpoint, now)

    def first_run(self, role: str) -> None:
        """A streamed leg's first event arrived from its worker."""
        now = _now()
        if self.first_event is None:
            self.first_event = now
        if role != "prefill":
            self.decode_first = now

    def leg_done(self, role: str, events: int, usage: dict | None) -> None:
        """A leg ended cleanly; `events`: the reads that carried its events (streams), `usage`: its usage."""
        now = _now()
        if self.spans is not None:
            self.spans.done(role, now, usage)
        if role == "prefill":
            self.prefill_done = now
            return
        self.end = now
        if usage:
            self.prompt_tokens = _int(usage.get("prompt_tokens"))
            self.completion_tokens = _int(usage.get("completion_tokens"))
        tokens = self.completion_tokens or events
        self.gaps = max(0, tokens - 1)

    # Read at the end -------------------------------------------------------------------

    @property
    def ttft(self) -> float | None:
        return None if self.first_event is None else self.first_event - self.start

    @property
    def itl(self) -> float | None:
        if self.gaps < 1 or self.end is None or self.decode_first is None:
            return None
        return (self.end - self.decode_first) / self.gaps

    @property
    def queued(self) -> float | None:
        return None if self.admitted_at is None else self.admitted_at - self.start

    @property
    def prefill_time(self) -> float | None:
        if self.prefill_sent is None or self.prefill_done is None:
            return None
        return self.prefill_done - self.prefill_sent

    @property
    def handoff(self) -> float | None:
        if self.prefill_done is None or self.decode_first is None or self.decode_first < self.prefill_done:
            return None
        return self.decode_first - self.prefill_done


_MAX_TOKENS = 2**53  # beyond it a count is no count (and a float overflows on the way to a metric)


def _int(value: object) -> int | None:
    """A worker's token count, or None when it is no sane count (not an int, negative, huge)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TOKENS:
        return value
    return None


def usage_of(*runs: bytes) -> dict | None:
    """The last `usage` object in these runs of SSE events (a stream's last two reads), if any."""
    for run in reversed(runs):
        if b'"usage"' not in run:
            continue
        for event in reversed(run.split(b"\n\n")):
            if event.startswith(b"data: {") and b'"usage"' in event:
                try:
                    usage = json.loads(event[6:]).get("usage")
                except (ValueError, AttributeError):
                    return None
                return usage if isinstance(usage, dict) else None
    return None
