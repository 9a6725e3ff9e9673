"""The prefill work queued on each endpoint, as the gateway estimates it: the uncached prompt
tokens of the requests it routed there that are still in flight.

The policy records each routed request's estimated uncached tokens; the endpoint's own
in-flight count (`Endpoint.outstanding`, kept by the gateway) says how many of the newest
records are still there (requests on one worker end roughly in the order they came, and a
compute-bound engine prefills them in that order). Requests the worker reports beyond this
gateway's (`Endpoint.foreign`) count at the mean recorded size.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pool import Endpoint


class Backlog:
    """Per endpoint, the last `keep` routed requests' uncached tokens, newest last."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self.mean = 0.0  # an EMA of recorded sizes (for the worker's foreign requests)
        self._routed: dict[str, deque[float]] = {}

    def record(self, url: str, uncached: float) -> None:
        q = self._routed.get(url)
        if q is None:
            q = self._routed[url] = deque(maxlen=self.keep)
        q.append(uncached)
        self.mean += (uncached - self.mean) / 64

    def of(self, e: Endpoint) -> float:
        """Uncached tokens queued or running on `e`."""
        n, foreign = e.outstanding, e.foreign
        if n <= 0:
            return foreign * self.mean if foreign else 0.0
        q = self._routed.get(e.url)
        mine = sum(islice(reversed(q), n)) if q else 0.0
        return mine + foreign * self.mean if foreign else mine

    def forget(self, url: str) -> None:
        self._routed.pop(url, None)
