"""Live progress: a rich bar on a terminal, plain lines otherwise (CI logs, pipes)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Protocol, TextIO


@dataclass
class Snapshot:
    done: int
    errors: int
    total: int | None
    tokens_per_s: float
    ttft_p50_s: float | None


def _describe(s: Snapshot) -> str:
    ttft = f"{s.ttft_p50_s * 1000:.0f} ms" if s.ttft_p50_s is not None else "-"
    total = f"/{s.total}" if s.total else ""
    return f"done {s.done}{total} errors {s.errors} throughput {s.tokens_per_s:.1f} tok/s TTFT p50 {ttft}"


class Progress(Protocol):
    def update(self, snap: Snapshot) -> None: ...

    def close(self, snap: Snapshot) -> None: ...


class PlainProgress:
    """One line every `every_s` seconds and a last one at the end."""

    def __init__(self, stream: TextIO, every_s: float = 5.0) -> None:
        self._stream = stream
        self._every = every_s
        self._last = time.monotonic()

    def update(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            print(f"loadtest: {_describe(snap)}", file=self._stream, flush=True)

    def close(self, snap: Snapshot) -> None:
        print(f"loadtest: finished: {_describe(snap)}", file=self._stream, flush=True)


class RichProgress:
    def __init__(self, stream: TextIO, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("loadtest"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(file=stream),
            transient=False,
        )
        self._task = self._bar.add_task("", total=total)
        self._bar.start()

    def update(self, snap: Snapshot) -> None:
        self._bar.update(self._task, completed=snap.done + snap.errors, description=_describe(snap))

    def close(self, snap: Snapshot) -> None:
        self.update(snap)
        self._bar.stop()


def make_progress(total: int | None, stream: TextIO | None = None, every_s: float = 5.0) -> Progress:
    out = stream or sys.stdout
    if out.isatty():
        return RichProgress(out, total)
    return PlainProgress(out, every_s)
