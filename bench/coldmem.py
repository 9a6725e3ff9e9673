"""What a read of memory costs on this machine once a core has been idle for a while.

The 1-stream figures depend on it more than on anything in the gateway: between two requests
the gateway's core sleeps, and on some virtual machines the next request then finds every page
it touches cold (caches and TLB refilled by other guests). The probe reads one byte from each
of 200 pages spread over 12.5 MiB after an idle spell, then the same pages again at once, on the
core given; it takes about 3 s.

    python -m bench.coldmem [--cpu N] [--idle-ms 300]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

PAGES = 200
STRIDE = 64 << 10  # apart by more than any prefetcher reaches


def cold_read_us(cpu: int | None = None, idle_s: float = 0.3, rounds: int = 8) -> tuple[float, float]:
    """(cold, warm) microseconds per page read, the medians over `rounds` idle spells."""
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        mem = bytearray(PAGES * STRIDE)  # written (zeroed) here: every page is mapped
        view = memoryview(mem)
        offsets = range(0, len(mem), STRIDE)
        cold, warm = [], []
        for r in range(rounds):
            time.sleep(idle_s)
            shift = (r * 64) % 4096  # another cache line of each page every round
            t0 = time.perf_counter()
            for off in offsets:
                view[off + shift]
            t1 = time.perf_counter()
            for off in offsets:
                view[off + shift]
            t2 = time.perf_counter()
            cold.append((t1 - t0) / PAGES * 1e6)
            warm.append((t2 - t1) / PAGES * 1e6)
    finally:
        os.sched_setaffinity(0, before)
    return sorted(cold)[rounds // 2], sorted(warm)[rounds // 2]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.coldmem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cpu", type=int, default=None, help="core to measure on (default: any)")
    p.add_argument("--idle-ms", type=float, default=300.0, help="idle spell before each cold pass (300)")
    args = p.parse_args(argv)
    cold, warm = cold_read_us(args.cpu, args.idle_ms / 1000)
    print(f"a read of a page after {args.idle_ms:g} ms idle: {cold:.2f} us (the same page again: {warm:.3f} us)")


if __name__ == "__main__":
    main()
