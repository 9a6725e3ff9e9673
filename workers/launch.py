"""Process supervision primitives: start a command in its own process group, wait
for its HTTP health check, stop the whole group.

A vLLM server is several processes (API server, engine core, workers, a
multiprocessing resource tracker); signalling only the API process can orphan the
engine. Every command therefore runs as the leader of a new session/process
group, and stop() signals and verifies the group, not the single pid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workers.probe import health_ok


class StartupError(RuntimeError):
    """The process exited, or did not become healthy in time; the message has its log tail."""


class StopError(RuntimeError):
    """Processes of the group survived SIGKILL."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether `port` can be bound now (as racy as free_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: a signal-0 probe (counts zombies too)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces/parens
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclass
class ProcessGroupHandle:
    proc: subprocess.Popen[bytes]
    argv: list[str]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session=True: the child leads its own group

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()[-64 * 1024 :]
        except OSError as e:
            return f"<no log: {e}>"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def gone(self) -> bool:
        """No live member is left; the leader is reaped then, so it does not linger as a zombie
        (it may have died just after the last look)."""
        if group_members(self.pgid):
            return False
        try:
            self.proc.wait(timeout=1)  # dead: returns at once
        except subprocess.TimeoutExpired:
            pass
        return True

    def _wait_group_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.gone():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def stop(self, grace_s: float = 10.0, kill_wait_s: float = 5.0) -> int | None:
        """SIGTERM the group, SIGKILL it after `grace_s`, reap, and verify it is empty.

        Returns the leader's exit status; raises StopError if anything survived SIGKILL.
        Safe to call more than once.
        """
        _signal_group(self.pgid, signal.SIGTERM)
        if not self._wait_group_gone(grace_s):
            _signal_group(self.pgid, signal.SIGKILL)
            if not self._wait_group_gone(kill_wait_s):
                raise StopError(f"pgid {self.pgid} still has {group_members(self.pgid)} after SIGKILL")
        try:
            return self.proc.wait(timeout=kill_wait_s)
        except subprocess.TimeoutExpired as e:  # leader alive yet not in its group: cannot happen
            raise StopError(f"pid {self.pid} did not exit") from e

    def kill(self) -> int | None:
        """Stop without grace (SIGKILL at once), e.g. to simulate a crash."""
        return self.stop(grace_s=0.0)


def start_group(
    argv: Sequence[str],
    env: Mapping[str, str | None] | None,
    log_path: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
) -> ProcessGroupHandle:
    """Start `argv` as the leader of a new session; stdout+stderr append to `log_path`.

    `env` overlays the current environment; a None value removes that variable.
    """
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    with path.open("ab") as log:
        log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ProcessGroupHandle(proc=proc, argv=list(argv), log_path=path)


async def wait_healthy(
    url: str,
    timeout_s: float,
    proc: ProcessGroupHandle | None = None,
    interval_s: float = 0.25,
) -> float:
    """Poll `GET {url}/health` until it answers 200; return the seconds waited.

    Fails fast with the log tail if `proc` exits first; StartupError on timeout.
    """
    health = url.rstrip("/") + "/health"
    t0 = time.monotonic()
    request_timeout_s = min(5.0, max(timeout_s, 0.1))
    while True:
        if proc is not None and not proc.alive():
            raise StartupError(
                f"{proc.argv[0]} exited with {proc.returncode} before {health} was healthy; "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        if await health_ok(url, request_timeout_s):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            tail = f"; log {proc.log_path}:\n{proc.log_tail()}" if proc is not None else ""
            raise StartupError(f"{health} not healthy after {timeout_s:.0f}s{tail}")
        await asyncio.sleep(interval_s)
