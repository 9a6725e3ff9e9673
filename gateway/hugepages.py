"""Putting the gateway's heap on transparent huge pages, by re-executing `serve` once.

A gateway that waits between requests finds its memory cold when the next one comes: on the
VM this project is benchmarked on, a read of a page not touched for 300 ms costs 2-6 us (14 ns
warm; bench/results/relay.md, "Cold memory"), and one request touches hundreds of the heap's pages.
With the heap on 2 MiB pages the same request touches a few of them, which halved the added
first-token time there. CPython's own allocator takes 1 MiB arenas, too small for a huge page,
so the heap goes to glibc's malloc (PYTHONMALLOC=malloc), told to ask for huge pages
(glibc.malloc.hugetlb=1, glibc >= 2.35, THP in "madvise" or "always" mode). Both are read at
interpreter start-up, hence the re-exec; PD_GATEWAY_HUGEPAGES=0 turns it off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

OPT_OUT = "PD_GATEWAY_HUGEPAGES"
TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_page_env(env: Mapping[str, str], thp_mode: str, glibc: str) -> dict[str, str] | None:
    """The environment to re-execute with, or None when there is nothing to gain (or it is done).

    `thp_mode` is the kernel's THP setting as the sysfs file shows it ("always [madvise] never"),
    `glibc` what confstr says of the C library ("glibc 2.36"), "" when it is another one.
    """
    if env.get(OPT_OUT) == "0" or env.get("PYTHONMALLOC") or TUNABLE in env.get("GLIBC_TUNABLES", ""):
        return None
    if "[never]" in thp_mode or "[" not in thp_mode or not _glibc_at_least(glibc, (2, 35)):
        return None
    tunables = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), TUNABLE]))
    return {**env, "PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": tunables}


def _glibc_at_least(glibc: str, version: tuple[int, int]) -> bool:
    name, _, number = glibc.partition(" ")
    try:
        return name == "glibc" and tuple(int(x) for x in number.split(".")[:2]) >= version
    except ValueError:
        return False


def huge_page_env_here(env: Mapping[str, str]) -> dict[str, str] | None:
    """`huge_page_env` with this machine's kernel setting and C library."""
    try:
        thp_mode = THP_MODE.read_text()
        glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (OSError, ValueError):
        return None
    return huge_page_env(env, thp_mode, glibc)


def reexec_on_huge_pages() -> None:
    """Re-execute this very command line with the heap on huge pages, where that applies."""
    env = huge_page_env_here(os.environ)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
