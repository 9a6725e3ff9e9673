"""Discovery for the whole gateway: one pod watcher per pool that has `discovery:`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from lightkube import AsyncClient

from ..pool import Endpoint, Pool
from .members import Membership
from .watch import PodWatcher

Check = Callable[[Endpoint], Awaitable[None]]


class Discovery:
    """Runs the watchers; a pod that joins gets its first health check at once (`check`),
    so it serves as soon as it passes rather than at the next health-check round."""

    def __init__(
        self, pools: list[Pool], check: Check | None = None, client: Callable[[Pool], AsyncClient] | None = None
    ) -> None:
        self.check = check
        self.watchers: list[PodWatcher] = []
        self._tasks: set[asyncio.Task] = set()
        for pool in pools:
            config = pool.config.discovery
            if config is None:
                continue
            membership = Membership(pool.name, pool.groups, self._publisher(pool))
            self.watchers.append(PodWatcher(pool.name, config, membership, client(pool) if client else None))

    def _publisher(self, pool: Pool) -> Callable[[str, list[str]], None]:
        def publish(role: str, urls: list[str]) -> None:
            for ep in pool.set_members(role, urls):  # type: ignore[arg-type]
                if self.check is not None:
                    self._spawn(self.check(ep))

        return publish

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        for watcher in self.watchers:
            self._spawn(watcher.run())

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for watcher in self.watchers:
            await watcher.client.close()
