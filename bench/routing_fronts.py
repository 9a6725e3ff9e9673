"""What the routing benchmark sends its workload to: the gateway in the benchmark's process (the
default), `pd-gateway serve` in its own processes (`@pN`: one serve with `processes: N`; `@rN`:
N single-process replicas, requests spread over them in turns as a Service's round robin), or
SGLang's router (`sglang`: sglang-router's `cache_aware` with its defaults, when installed).

A policy spec is `name[;option=value...][@pN|@rN]`, e.g. `prefix_aware@p2`, `prefix_aware@r4`,
`sglang`, `sglang;balance_abs_threshold=4` (options become sglang-router flags).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from gateway.config import parse_config
from gateway.server import start_gateway
from workers.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
SGLANG = "sglang"


@dataclass
class Front:
    urls: list[str]  # request i goes to urls[i % len(urls)]
    close: Callable[[], Awaitable[None]]
    policy: object | None = None  # the in-process gateway's policy (its decisions are timed)
    label: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)


def split(spec: str) -> tuple[str, str, int]:
    """(policy spec, mode, count): mode `in-process`, `processes`, `replicas` or `sglang`."""
    if spec.split(";", 1)[0] == SGLANG:
        return spec, SGLANG, 1
    policy, _, where = spec.partition("@")
    if not where:
        return policy, "in-process", 1
    mode = {"p": "processes", "r": "replicas"}[where[0]]
    return policy, mode, int(where[1:])


def sglang_installed() -> bool:
    return importlib.util.find_spec("sglang_router") is not None


async def start_front(spec: str, config: dict, workers: list[str]) -> Front:
    policy, mode, count = split(spec)
    if mode == "in-process":
        gw = await start_gateway(parse_config(config))
        while not gw.gateway.ready:
            await asyncio.sleep(0.05)
        return Front([gw.url], gw.close, gw.gateway.pools[0].policies)
    if mode == SGLANG:
        return await _sglang(policy, workers)
    directory = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    procs, urls = [], []
    for i in range(1 if mode == "processes" else count):
        port = free_port()
        path = directory / f"gateway-{i}.yaml"
        extra = {"processes": count} if mode == "processes" else {}
        path.write_text(yaml.safe_dump({**config, **extra, "listen": {"host": "127.0.0.1", "port": port}}))
        argv = [sys.executable, "-m", "pdcli", "serve", "--config", str(path)]
        procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    await _ready(urls, procs, fresh=max(8, 4 * count))
    return Front(urls, lambda: _stop(procs), procs=procs)


async def _ready(urls: list[str], procs: list[subprocess.Popen], fresh: int, timeout_s: float = 60.0) -> None:
    """Every URL answers /ready with 200 `fresh` times in a row on new connections (with
    several processes on one port, each connection may reach another one)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for url in urls:
        ok = 0
        while ok < fresh:
            if loop.time() > deadline or any(p.poll() is not None for p in procs):
                await _stop(procs)
                raise RuntimeError(f"{url} did not become ready")
            try:
                async with httpx.AsyncClient(timeout=2) as c:
                    ok = ok + 1 if (await c.get(url + "/ready")).status_code == 200 else 0
            except httpx.HTTPError:
                ok = 0
            if ok == 0:
                await asyncio.sleep(0.1)


async def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.to_thread(p.wait, 30)
        except subprocess.TimeoutExpired:
            p.kill()


async def _sglang(spec: str, workers: list[str]) -> Front:
    """sglang-router (`pip install sglang-router`), cache_aware, defaults unless the spec says."""
    if not sglang_installed():
        raise RuntimeError("sglang-router is not installed (pip install sglang-router==0.3.2)")
    _, *pairs = spec.split(";")
    flags = []
    for pair in pairs:
        key, value = pair.split("=", 1)
        flags += [f"--{key.replace('_', '-')}", value]
    port = free_port()
    argv = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
            "--policy", "cache_aware", "--worker-urls", *workers, "--log-level", "warn",
            "--prometheus-port", str(free_port()), *flags]  # fmt: skip
    env = {**os.environ, "RUST_LOG": "warn"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    await _ready_sglang(url, proc)
    return Front([url], lambda: _stop([proc]), procs=[proc], label="sglang-router cache_aware")


async def _ready_sglang(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline and proc.poll() is None:
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                if (await c.get(url + "/health")).status_code == 200:
                    return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    await _stop([proc])
    raise RuntimeError(f"sglang-router at {url} did not become ready")
