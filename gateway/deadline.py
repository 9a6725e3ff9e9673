"""A request's time limits, read in one place: set when the request is admitted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .config import Limits, Timeouts


@dataclass(frozen=True, slots=True)
class Deadline:
    first_byte_s: float  # a worker's answer (headers, or the first event of a stream)
    between_chunks_s: float  # the gap between two reads of a response
    queue_timeout_s: float  # how long a request may wait for a worker below its in-flight limit
    total_at: float  # loop time by which the whole request must be over
    client_write_s: float  # how long a write to the client may wait for it to read

    @classmethod
    def start(cls, timeouts: Timeouts, limits: Limits) -> Deadline:
        now = asyncio.get_running_loop().time()
        return cls(
            timeouts.first_byte_s,
            timeouts.between_chunks_s,
            limits.queue_timeout_s,
            now + timeouts.total_s,
            timeouts.client_write_s,
        )

    def remaining_s(self) -> float:
        return self.total_at - asyncio.get_running_loop().time()
