"""Stream timeouts (between chunks, total) checked by one periodic sweep.

A per-chunk timer would cost a timer handle per relayed chunk; instead each stream
bumps a counter and one task looks for streams whose counter stopped moving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watched:
    __slots__ = ("progress", "stall_s", "deadline", "reason", "_abort", "_seen", "_since")

    def __init__(self, stall_s: float, deadline: float, abort: Callable[[], None], now: float) -> None:
        self.progress = 0
        self.stall_s = stall_s
        self.deadline = deadline
        self.reason: str | None = None
        self._abort = abort
        self._seen = 0
        self._since = now

    def abort(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._abort()

    def check(self, now: float) -> None:
        if now >= self.deadline:
            self.abort("the request exceeded its total timeout")
        elif self.progress != self._seen:
            self._seen = self.progress
            self._since = now
        elif now - self._since >= self.stall_s:
            self.abort(f"the worker sent nothing for {self.stall_s:g}s")


class Watchdog:
    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._active: set[Watched] = set()

    def watch(self, stall_s: float, deadline: float, abort: Callable[[], None]) -> Watched:
        """Call `abort` once nothing moved for `stall_s`, or at loop time `deadline`."""
        now = asyncio.get_running_loop().time()
        w = Watched(stall_s, deadline, abort, now)
        self._active.add(w)
        return w

    def forget(self, w: Watched) -> None:
        self._active.discard(w)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period_s)
            now = loop.time()
            for w in list(self._active):
                w.check(now)
