"""Processes of the relay benchmark: starting the servers pinned to a core, waiting for them to
be ready, and measuring CPU time (utime+stime from /proc/PID/stat, per-core busy time from
/proc/stat); also the machine and code description printed with the figures."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _huge_page_kib(pid: int) -> int | None:
    """The process's memory on transparent huge pages (AnonHugePages), in KiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _core_busy() -> dict[str, float]:
    """Busy seconds of every core so far, all processes (from /proc/stat)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *ticks = line.split()
                vals = [int(t) for t in ticks]
                idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                out[name] = (sum(vals[:8]) - idle) / CLK_TCK
    return out


def _self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _pin(cpu: int | None) -> Callable[[], None]:
    def pre() -> None:
        os.setpgrp()  # a Ctrl-C aimed at the bench does not reach the servers mid-measurement
        _die_with_parent()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        _raise_nofile()

    return pre


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the server gets SIGTERM if the bench dies without stopping it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, name: str, argv: list[str], cpu: int | None, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pin(cpu),
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_s(self) -> float:
        return _cpu_seconds(self.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


async def _get_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        line = await reader.readline()
        await reader.read()
        return int(line.split()[1])
    finally:
        writer.close()


async def _wait_ready(proc: Proc, port: int, path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if await _get_status(port, path) == 200:
                return
        except (OSError, ValueError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready on {path} after {timeout_s:g}s:\n{proc.tail()}")
        await asyncio.sleep(0.05)


def _machine(pinning: str, code: str) -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import platform

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "pinning": pinning,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "code": code,
    }


def _code_version() -> str:
    """The commit the gateway and workers ran from, and whether their files differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway", "workers"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head} (gateway/ or workers/ modified)" if dirty else head
