"""Reading a few vLLM gauges out of a worker's Prometheus /metrics page without parsing it.

A real vLLM page is tens of kilobytes (more with engines, models and LoRA adapters) of
histograms the gateway never reads; a full prometheus_client parse of it costs milliseconds
of CPU on the event loop per page (bench/metrics_page.py). Here each wanted metric's sample
lines are found with `bytes.find` for the line start `\\n<name>{` (or `\\n<name> `), which
runs at memory speed, and only those lines are decoded: one or a few per engine.
"""

from __future__ import annotations

from collections.abc import Iterator


class MetricsPage:
    """One /metrics body in the Prometheus text format, read by metric name."""

    def __init__(self, body: bytes) -> None:
        self._text = b"\n" + body  # every line, the first included, starts after a newline

    def lines(self, name: str) -> Iterator[bytes]:
        """The sample lines of metric `name`, without their newline; `# HELP`/`# TYPE` lines
        and metrics whose names merely start with `name` are not matched.

        The text format keeps a metric's samples together in one group, so the search stops at
        the group's end instead of scanning the rest of the page."""
        text, head = self._text, b"\n" + name.encode()
        after = len(head)  # the offset of the character after the name: `{` or ` ` on a sample
        at = text.find(head)
        while at >= 0 and text[at + after : at + after + 1] not in (b"{", b" "):  # a longer name
            at = text.find(head, at + after)
        while at >= 0 and text.startswith(head, at) and text[at + after : at + after + 1] in (b"{", b" "):
            end = text.find(b"\n", at + 1)
            end = len(text) if end < 0 else end
            yield text[at + 1 : end]
            at = end

    def values(self, name: str) -> list[float]:
        """Every sample value of `name` (one per engine, model...); malformed lines are skipped."""
        out = []
        for line in self.lines(name):
            try:
                out.append(value_of(line))
            except (ValueError, IndexError):
                continue
        return out


def value_of(line: bytes) -> float:
    """A sample line's value: the first field after the labels (a timestamp may follow)."""
    brace = line.rfind(b"}")  # the label set's end: neither the value nor a timestamp holds one
    rest = line[brace + 1 :] if brace >= 0 else line.split(None, 1)[1]
    return float(rest.split(None, 1)[0])


def label(line: bytes, name: str) -> str | None:
    """One label's value on a sample line (as written, unescaped: the gateway reads numbers)."""
    key = name.encode() + b'="'
    for sep in (b"{", b","):  # a whole label name, not one ending in `name`
        at = line.find(sep + key)
        if at >= 0:
            start = at + 1 + len(key)
            return line[start : line.find(b'"', start)].decode()
    return None
