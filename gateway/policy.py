"""Choosing an endpoint: pure functions over a snapshot of endpoint load."""

from __future__ import annotations

from collections.abc import Callable, Sequence

# A policy takes the candidates' loads and a tie-breaking cursor, and returns an index.
Policy = Callable[[Sequence[int], int], int]


def least_loaded(loads: Sequence[int], cursor: int) -> int:
    """Index of the least loaded candidate; equal loads take turns via the cursor."""
    low = min(loads)
    ties = [i for i, load in enumerate(loads) if load == low]
    return ties[cursor % len(ties)]
