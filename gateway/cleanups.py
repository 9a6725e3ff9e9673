"""Work a request leaves to finish after it has ended, such as giving back a prefill's KV lease.

The gateway owns these tasks, not the request (which may be cancelled, its client gone): each
runs under its own deadline, at most `limit` run at once (beyond that the work is dropped and
logged, and what it would have given back expires on the worker's side), and `run` cancels
whatever is left when the gateway stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("pd_gateway")


class Cleanups:
    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, what: str, work: Callable[[], Awaitable[object]], timeout_s: float) -> bool:
        """Run `work()` in the background for at most `timeout_s`; False when too many already run."""
        if len(self._tasks) >= self.limit:
            self.dropped += 1
            log.warning("%s dropped: %d clean-ups already running", what, len(self._tasks))
            return False
        task = asyncio.get_running_loop().create_task(self._bounded(what, work, timeout_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    @staticmethod
    async def _bounded(what: str, work: Callable[[], Awaitable[object]], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await work()
        except TimeoutError:
            log.warning("%s not done within %gs", what, timeout_s)
        except Exception:
            log.exception("%s failed", what)

    async def run(self) -> None:
        """Wait while the gateway serves; cancel what is still running when it stops."""
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            for task in list(self._tasks):
                task.cancel()
