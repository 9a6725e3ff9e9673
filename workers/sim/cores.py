"""Exclusive NeuronCore claims for simulated workers, as the Neuron runtime enforces them.

A real Neuron runtime refuses to start on a core another live process holds. The
sim reproduces that with one lock file per core under a shared directory
(``PD_SIM_CORE_DIR``, default ``/tmp/pd-sim-cores``): a worker takes an exclusive
``flock`` on each of its cores and keeps the descriptors open for its lifetime.
The kernel drops flock locks when the holder dies, so a crashed worker's claim
disappears by itself and no stale-lock cleanup is needed.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path

from workers.plan.cores import format_cores, parse_cores

CORE_DIR_VAR = "PD_SIM_CORE_DIR"
DEFAULT_CORE_DIR = "/tmp/pd-sim-cores"


class CoreInUse(RuntimeError):
    """A requested core is held by another live process."""

    def __init__(self, core: int, owner: str) -> None:
        super().__init__(
            f"NeuronCore {core} is already in use by {owner} (as the Neuron runtime would refuse); "
            "give each worker a disjoint --neuron-cores range or stop the other worker"
        )
        self.core = core


def core_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(CORE_DIR_VAR) or DEFAULT_CORE_DIR)


class CoreClaim:
    """Locks on a set of cores; they last until release() or the process ends."""

    def __init__(self, cores: list[int], fds: list[int]) -> None:
        self.cores = cores
        self._fds = fds

    def __repr__(self) -> str:
        return f"CoreClaim({format_cores(self.cores)!r})"

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the last descriptor drops the flock
        self._fds = []


def claim_cores(spec: str, directory: Path) -> CoreClaim:
    """Claim every core of `spec` ('0-15', '0,2,4-7') or raise CoreInUse (holding nothing)."""
    cores = parse_cores(spec)
    directory.mkdir(parents=True, exist_ok=True)
    fds: list[int] = []
    try:
        for core in cores:
            fds.append(_lock_core(directory, core))
    except BaseException:
        CoreClaim(cores, fds).release()
        raise
    return CoreClaim(cores, fds)


def _lock_core(directory: Path, core: int) -> int:
    path = directory / f"core-{core}.lock"
    # Descriptors are non-inheritable (O_CLOEXEC), so children never keep a claim alive.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner(fd)
        os.close(fd)
        raise CoreInUse(core, owner) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _owner(fd: int) -> str:
    # The holder writes its pid right after locking; it may not have yet.
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "another process"
