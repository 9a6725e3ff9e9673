"""Keep a set of planned workers running: start each in its own process group, wait
for its health check, restart it with exponential backoff when it dies, give up on
one that keeps dying before it ever gets healthy, and stop every group on shutdown.

The supervisor runs in the caller's event loop (next to the gateway in `pd-gateway
up`); it never blocks the loop: exits are polled and groups are stopped with async
waits. State changes go to a callback (the progress display) and to
`<log dir>/workers.json`, which names every pid a worker has had.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from workers.launch import ProcessGroupHandle, StartupError, group_members, start_group, wait_healthy
from workers.plan.launch import WorkerSpec

State = Literal["starting", "healthy", "restarting", "failed", "stopping", "stopped"]
STATE_FILE = "workers.json"
_POLL_S = 0.2


@dataclass(frozen=True)
class RestartPolicy:
    ready_timeout_s: float = 600.0  # per attempt: from launch to a 200 on /health
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    # Consecutive deaths before ever answering /health that make the worker "failed".
    startup_failures: int = 3
    max_restarts: int | None = None  # over the worker's lifetime; None: no limit
    # A worker healthy this long has recovered: its backoff starts again from the base.
    stable_s: float = 60.0
    stop_grace_s: float = 10.0  # SIGTERM to SIGKILL

    def backoff(self, streak: int) -> float:
        """Seconds before restart number `streak` of a crash streak: 1, 2, 4, ... capped."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, streak - 1))


@dataclass
class Worker:
    spec: WorkerSpec
    log_path: Path
    state: State = "starting"
    since: float = field(default_factory=time.monotonic)  # when `state` began
    handle: ProcessGroupHandle | None = None
    pids: list[int] = field(default_factory=list)  # every process-group leader it has had
    restarts: int = 0
    startup_failures: int = 0  # consecutive, reset once healthy
    streak: int = 0  # consecutive deaths, reset after stable_s of health
    healthy_after_s: float | None = None  # launch-to-healthy of the latest attempt
    last_exit: str | None = None
    retry_in_s: float | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # first healthy, or failed

    @property
    def name(self) -> str:
        return self.spec.name


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def port_in_use(url: str) -> bool:
    """Whether something already listens where the worker should (it would fail to bind,
    and its health check would reach the squatter instead)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


async def stop_group(handle: ProcessGroupHandle, grace_s: float, kill_wait_s: float = 5.0) -> bool:
    """SIGTERM the group, SIGKILL it after `grace_s`; True once no member is left."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        try:
            os.killpg(handle.pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while True:
            if handle.gone():
                return True
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
    return False


class Supervisor:
    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        log_dir: Path,
        policy: RestartPolicy,
        on_change: Callable[[Worker], None] = lambda w: None,
        cwd: Path | None = None,
    ) -> None:
        self.workers = [Worker(s, log_dir / f"{s.name}.log") for s in specs]
        self.log_dir = log_dir
        self.policy = policy
        self._on_change = on_change
        self._cwd = cwd
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._tasks = [asyncio.create_task(self._run(w), name=f"supervise {w.name}") for w in self.workers]

    async def settled(self) -> None:
        """Returns once every worker has been healthy once or has been given up on."""
        await asyncio.gather(*(w.settled.wait() for w in self.workers))

    async def stop(self) -> list[str]:
        """Stop supervising and stop every group; returns problems (groups that survived)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        live = [(w, w.handle) for w in self.workers if w.handle is not None and w.state != "failed"]
        for w, _ in live:
            self._set(w, "stopping")
        gone = await asyncio.gather(*(stop_group(h, self.policy.stop_grace_s) for _, h in live))
        problems = []
        for (w, h), ok in zip(live, gone, strict=True):
            self._set(w, "stopped")
            if not ok:
                problems.append(f"{w.name}: pids {group_members(h.pgid)} survived SIGKILL")
        return problems

    # -- one worker -------------------------------------------------------------

    async def _run(self, w: Worker) -> None:
        while True:
            healthy, cause = await self._attempt(w)
            if healthy:
                await self._until_exit(w)
            if w.handle is not None:
                # The leader may be gone while engine processes of its group live on.
                await stop_group(w.handle, self.policy.stop_grace_s)
                cause = cause or describe_exit(w.handle.returncode)
            w.last_exit = cause
            w.streak += 1
            if not healthy:
                w.startup_failures += 1
            if self._give_up(w):
                self._set(w, "failed")
                w.settled.set()
                return
            w.retry_in_s = self.policy.backoff(w.streak)
            self._set(w, "restarting")
            await asyncio.sleep(w.retry_in_s)
            w.restarts += 1

    async def _attempt(self, w: Worker) -> tuple[bool, str | None]:
        """Launch once and wait for /health: (healthy, why not when it is already known)."""
        w.handle = None
        if port_in_use(w.spec.url):
            cause = f"port {w.spec.port} is already in use by another process"
            _note(w.log_path, cause)
            return False, cause
        env = {**w.spec.env, "PYTHONUNBUFFERED": "1"}
        w.handle = start_group(w.spec.argv, env, w.log_path, cwd=self._cwd)
        w.pids.append(w.handle.pid)
        self._set(w, "starting")
        try:
            waited = await wait_healthy(w.spec.url, self.policy.ready_timeout_s, w.handle)
        except StartupError:
            if not w.handle.alive():
                return False, None
            cause = f"not healthy after {self.policy.ready_timeout_s:.0f}s"
            _note(w.log_path, f"{cause}; stopping it")
            return False, cause
        w.healthy_after_s = waited
        w.startup_failures = 0
        self._set(w, "healthy")
        w.settled.set()
        return True, None

    async def _until_exit(self, w: Worker) -> None:
        assert w.handle is not None
        healthy_since = time.monotonic()
        while w.handle.alive():
            if w.streak and time.monotonic() - healthy_since >= self.policy.stable_s:
                w.streak = 0
            await asyncio.sleep(_POLL_S)

    def _give_up(self, w: Worker) -> bool:
        p = self.policy
        return w.startup_failures >= p.startup_failures or (p.max_restarts is not None and w.restarts >= p.max_restarts)

    def _set(self, w: Worker, state: State) -> None:
        w.state, w.since = state, time.monotonic()
        self._write_state()
        self._on_change(w)

    def _write_state(self) -> None:
        rows = [
            {
                "name": w.name,
                "pool": w.spec.pool,
                "role": w.spec.role,
                "url": w.spec.url,
                "cores": w.spec.cores,
                "state": w.state,
                "pid": w.handle.pid if w.handle is not None and w.state != "stopped" else None,
                "pids": w.pids,
                "restarts": w.restarts,
                "last_exit": w.last_exit,
                "log": str(w.log_path),
            }
            for w in self.workers
        ]
        path = self.log_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"supervisor_pid": os.getpid(), "workers": rows}, indent=2) + "\n")
        tmp.replace(path)  # readers never see a half-written file


def failure_report(w: Worker, policy: RestartPolicy, lines: int = 20) -> str:
    """What an operator needs when a worker is given up on: who, why, and its log tail."""
    s = w.spec
    tries = w.restarts + 1
    why = (
        f"died {w.startup_failures} time(s) in a row before its health check passed"
        if w.startup_failures >= policy.startup_failures
        else f"reached --max-restarts {policy.max_restarts}"
    )
    tail = log_tail(w.log_path, lines)
    body = "\n".join(f"  | {line}" for line in tail.splitlines()) or "  | (empty)"
    return (
        f"worker {s.name} FAILED (pool {s.pool}, role {s.role}, {s.url}, cores {s.cores or '-'}): "
        f"{why}; last: {w.last_exit}; {tries} attempt(s); not restarting it any more.\n"
        f"  command: {' '.join(s.argv)}\n"
        f"  log: {w.log_path} (last {lines} lines):\n{body}"
    )


def log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of the latest attempt (start_group heads each with '=== ... start:')."""
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError as err:
        return f"<no log: {err}>"
    text = data.decode("utf-8", "replace").splitlines()
    starts = [i for i, line in enumerate(text) if line.startswith("=== ") and " start: " in line]
    latest = text[starts[-1] + 1 :] if starts else text
    return "\n".join(latest[-lines:])


def _note(log_path: Path, message: str) -> None:
    """A line from the supervisor in the worker's own log, where its operator looks."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as f:
        f.write(f"=== {time.strftime('%H:%M:%S')} pd-gateway up: {message}\n")
