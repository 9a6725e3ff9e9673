"""Start-up progress of `pd-gateway up` on stderr: one line per worker (name, role,
port, cores, state, seconds), redrawn in place on a terminal, or one plain line per
state change when stderr is a file or a pipe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TextIO

from workers.supervise import Worker

_CLEAR_LINE = "\x1b[2K"
_CLEAR_DOWN = "\x1b[J"


def _up(n: int) -> str:
    return f"\x1b[{n}A" if n else ""


def detail(w: Worker, now: float) -> str:
    """The state column and what follows it, e.g. 'healthy     0.4s'."""
    elapsed = now - w.since
    if w.state == "healthy" and w.healthy_after_s is not None:
        return f"healthy     {w.healthy_after_s:5.1f}s"
    if w.state == "restarting":
        return f"restarting  {elapsed:5.1f}s  ({w.last_exit}; restart {w.restarts + 1} in {w.retry_in_s:.0f}s)"
    if w.state == "failed":
        return f"failed             ({w.last_exit}; see the report)"
    return f"{w.state:<10}  {elapsed:5.1f}s"


class Progress:
    def __init__(self, stream: TextIO, workers: Sequence[Worker], live: bool | None = None) -> None:
        self._stream = stream
        self._workers = list(workers)
        self.live = stream.isatty() if live is None else live
        self._drawn = 0
        self._name_w = max((len(w.name) for w in self._workers), default=4)
        self._cores_w = max((len(w.spec.cores or "-") for w in self._workers), default=1)

    def row(self, w: Worker, now: float) -> str:
        s = w.spec
        return (
            f"  {s.name:<{self._name_w}}  {s.role:<7}  :{s.port:<5}  "
            f"cores {s.cores or '-':<{self._cores_w}}  {detail(w, now)}"
        )

    def changed(self, w: Worker) -> None:
        if self.live:
            self.redraw()
        elif w.state not in ("stopping", "stopped"):  # shutdown is summed up by the caller
            self._write(f"[up] {self.row(w, time.monotonic()).strip()}\n")

    def redraw(self) -> None:
        now = time.monotonic()
        text = _up(self._drawn) + "".join(f"\r{_CLEAR_LINE}{self.row(w, now)}\n" for w in self._workers)
        self._drawn = len(self._workers)
        self._write(text)

    def message(self, text: str) -> None:
        """Print above the live block (which is drawn again below it)."""
        if self.live:
            self._write(_up(self._drawn) + "\r" + _CLEAR_DOWN + text.rstrip("\n") + "\n")
            self._drawn = 0
            self.redraw()
        else:
            self._write(text.rstrip("\n") + "\n")

    def finish(self) -> None:
        """Leave the block as it is and log later changes as plain lines (the gateway's
        own log lines share stderr from here on)."""
        if self.live:
            self.redraw()
            self.live = False

    async def animate(self, interval_s: float = 0.5) -> None:
        while True:
            if self.live:
                self.redraw()
            await asyncio.sleep(interval_s)

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
