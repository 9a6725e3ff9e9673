"""Real vLLM (CPU) servers for the `real` test tier.

Fixtures (session-scoped; each server runs in its own process group, started from
the tiny local model built by scripts/make_tiny_model.py):

  vllm_replicas   list of 2 plain servers
  vllm_pd_pair    PDPair(prefill, decode): NixlConnector kv_producer + kv_consumer
  vllm_colocated  one plain server (vllm_replicas[0], so it costs no extra server)

Each server is a VllmServer with `.url`, `.handle` (workers.launch.ProcessGroupHandle),
`.startup_s`, `stop()`, and `await restart()` (same ports, same flags).

The stack is probed once per session in a subprocess; when it is missing the real
tests skip, or fail when PD_REQUIRE_REAL=1 (CI), so the tier never vanishes silently.
Env knobs: PD_VLLM_PYTHON (interpreter for the servers, default: this one),
PD_TINY_MODEL (model dir), PD_VLLM_STARTUP_TIMEOUT (s, default 300).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from workers.launch import ProcessGroupHandle, bindable, start_group, wait_healthy
from workers.plan.launch import NIXL_CPU_SITE

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODEL_DIR = Path(os.environ.get("PD_TINY_MODEL", ROOT / ".models" / "tiny-llama"))
PYTHON = os.environ.get("PD_VLLM_PYTHON", sys.executable)
STARTUP_TIMEOUT_S = float(os.environ.get("PD_VLLM_STARTUP_TIMEOUT", "300"))
MODEL_NAME = "tiny"
MAX_MODEL_LEN = 512

SERVER_ARGS = [
    "--served-model-name", MODEL_NAME,
    "--host", "127.0.0.1",
    "--enforce-eager",
    "--dtype", "float32",
    "--max-model-len", str(MAX_MODEL_LEN),
    "--max-num-seqs", "8",
    "--kv-cache-memory-bytes", "64M",  # 64K tokens of this model's KV; ~1 GiB less RSS than the default
    "--seed", "0",
]  # fmt: skip

SERVER_ENV: dict[str, str | None] = {
    # The legacy VLLM_CPU_KVCACHE_SPACE (whole GiB) overrides --kv-cache-memory-bytes.
    "VLLM_CPU_KVCACHE_SPACE": None,
    # Several servers share 2 cores: no core pinning, one compute thread each.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # No network: never ask a hub, never phone home.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def server_env() -> dict[str, str | None]:
    """SERVER_ENV plus the NIXL spin fix on PYTHONPATH; None means: unset it."""
    pythonpath = os.pathsep.join(p for p in (NIXL_CPU_SITE, os.environ.get("PYTHONPATH")) if p)
    return {**SERVER_ENV, "PYTHONPATH": pythonpath}


def _nixl_config(role: str) -> str:
    return json.dumps({"kv_connector": "NixlConnector", "kv_role": role, "kv_buffer_device": "cpu"})


@dataclass
class VllmServer:
    """One `python -m vllm.entrypoints.openai.api_server` in its own process group."""

    name: str
    port: int
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str | None] = field(default_factory=dict)
    handle: ProcessGroupHandle | None = None
    startup_s: float | None = None  # of the latest (re)start
    startups: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [
            PYTHON, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(MODEL_DIR), "--port", str(self.port),
            *SERVER_ARGS, *self.extra_args,
        ]  # fmt: skip

    @property
    def env(self) -> dict[str, str | None]:
        return {**server_env(), **self.extra_env}

    def start(self) -> None:
        """Launch without waiting; see wait_ready()."""
        if self.handle is not None and self.handle.alive():
            raise RuntimeError(f"{self.name} is already running")
        self.handle = start_group(self.argv, self.env, self.log_path, cwd=ROOT)

    async def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
        assert self.handle is not None, "start() first"
        await wait_healthy(self.url, timeout_s, self.handle)
        self.startup_s = time.monotonic() - self.handle.started_at
        self.startups.append(self.startup_s)
        return self.startup_s

    def stop(self, grace_s: float = 10.0) -> None:
        if self.handle is not None:
            self.handle.stop(grace_s)

    async def restart(self, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
        """Stop the group if it still runs, start again on the same ports; return startup seconds."""
        await asyncio.to_thread(self.stop)
        self.start()
        return await self.wait_ready(timeout_s)


@dataclass
class PDPair:
    prefill: VllmServer
    decode: VllmServer
    warmups: list[float] = field(default_factory=list)  # seconds per warm-up round trip

    @property
    def url(self) -> str:  # the decode server answers the client
        return self.decode.url

    @property
    def handle(self) -> ProcessGroupHandle | None:
        return self.prefill.handle

    def warm_up(self, timeout_s: float = 120.0) -> float:
        """One P->D round trip, so the NIXL handshake and the first UCX transfer (which
        can take seconds up to the 30 s KV lease on CPU; docs/real-vllm.md) happen here
        and not inside a test."""
        t0 = time.monotonic()
        body = {"model": MODEL_NAME, "prompt": "warm up the transfer path", "temperature": 0}
        with httpx.Client(timeout=timeout_s) as client:
            p = client.post(f"{self.prefill.url}/v1/completions", json={
                **body, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}})  # fmt: skip
            p.raise_for_status()
            params = p.json()["kv_transfer_params"]
            client.post(f"{self.decode.url}/v1/completions",
                        json={**body, "max_tokens": 2, "kv_transfer_params": params}).raise_for_status()  # fmt: skip
        self.warmups.append(time.monotonic() - t0)
        return self.warmups[-1]

    async def restart(self, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
        """Restart the prefill server (the one a fault test kills) and warm the pair up
        again; returns P's startup seconds (warm-up not included)."""
        startup_s = await self.prefill.restart(timeout_s)
        await asyncio.to_thread(self.warm_up)
        return startup_s


_STARTED: list[VllmServer] = []  # for the terminal summary
_PAIRS: list[PDPair] = []


def distinct_ports(n: int) -> list[int]:
    """`n` free ports below the kernel's ephemeral range (32768-60999 here): a port freed by a
    server's restart must not be taken meanwhile by a bind(0), as vLLM's own internal sockets do
    (a restarted prefill once found its NIXL side-channel port taken)."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 32000)
        if port not in ports and bindable(port):
            ports.append(port)
    return ports


def start_servers(servers: list[VllmServer], timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Start all at once, wait for all; on any failure stop them all and raise."""
    try:
        for s in servers:
            s.start()

        async def wait_all() -> None:
            await asyncio.gather(*(s.wait_ready(timeout_s) for s in servers))

        asyncio.run(wait_all())
    except BaseException:
        stop_servers(servers)
        raise
    _STARTED.extend(servers)


def stop_servers(servers: list[VllmServer]) -> None:
    errors = []
    for s in servers:
        try:
            s.stop()
        except Exception as e:  # keep stopping the others
            errors.append(f"{s.name}: {e}")
    if errors:
        raise RuntimeError("; ".join(errors))


# ---------------------------------------------------------------- marking, gating


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: among the slowest real tests (P/D transfer, restarts)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.real)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if _STARTED:
        terminalreporter.section("real vLLM servers")
        for s in _STARTED:
            times = ", ".join(f"{t:.1f}s" for t in s.startups)
            terminalreporter.write_line(f"{s.name:10s} {s.url}  startup: {times}  log: {s.log_path}")
        for pair in _PAIRS:
            times = ", ".join(f"{t:.1f}s" for t in pair.warmups)
            terminalreporter.write_line(f"P/D warm-up round trips: {times}")


_PROBE = """
import importlib, json, sys
out = {}
for mod in ("vllm.entrypoints.openai.api_server", "nixl._api"):
    try:
        importlib.import_module(mod)
        out[mod] = None
    except BaseException as e:
        out[mod] = f"{type(e).__name__}: {e}"
print("PROBE" + json.dumps(out))
"""


def _unavailable(reason: str) -> None:
    if os.environ.get("PD_REQUIRE_REAL") == "1":
        pytest.fail(f"PD_REQUIRE_REAL=1 but the real vLLM tier cannot run: {reason}", pytrace=False)
    pytest.skip(f"real vLLM stack unavailable ({reason}); run scripts/real-env.sh")


@pytest.fixture(scope="session")
def vllm_stack() -> dict[str, str | None]:
    """Probe the stack once (subprocess; importing vLLM here would cost seconds and RAM)."""
    try:
        proc = subprocess.run(
            [PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=180, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": NIXL_CPU_SITE},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f"probe of {PYTHON} failed: {e}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE")), None)
    if line is None:
        _unavailable(f"probe crashed (rc {proc.returncode}): {proc.stderr[-500:]}")
    status: dict[str, str | None] = json.loads(line[5:])
    if status["vllm.entrypoints.openai.api_server"]:
        _unavailable(f"import vllm: {status['vllm.entrypoints.openai.api_server']}")
    if not (MODEL_DIR / "config.json").exists():
        built = subprocess.run(
            [PYTHON, str(ROOT / "scripts" / "make_tiny_model.py"), "--out", str(MODEL_DIR)],
            capture_output=True, text=True,
        )  # fmt: skip
        if built.returncode != 0:
            _unavailable(f"cannot build the tiny model: {built.stderr[-500:]}")
    return status


@pytest.fixture(scope="session")
def vllm_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm-logs")


# ---------------------------------------------------------------- server fixtures


@pytest.fixture(scope="session")
def vllm_replicas(vllm_stack, vllm_logs: Path):
    servers = [
        VllmServer(f"replica-{i}", port, vllm_logs / f"replica-{i}.log") for i, port in enumerate(distinct_ports(2))
    ]
    start_servers(servers)
    yield servers
    stop_servers(servers)


@pytest.fixture(scope="session")
def vllm_colocated(vllm_replicas: list[VllmServer]) -> VllmServer:
    return vllm_replicas[0]


@pytest.fixture(scope="session")
def vllm_nixl(vllm_stack) -> None:
    """NIXL imports (skip, or fail under PD_REQUIRE_REAL=1, when it does not)."""
    if vllm_stack["nixl._api"]:
        _unavailable(f"import nixl: {vllm_stack['nixl._api']}")


@pytest.fixture(scope="session")
def vllm_server_env() -> dict[str, str | None]:
    """The environment the fixtures' servers run with, for tests that launch vLLM themselves."""
    return server_env()


@pytest.fixture(scope="session")
def vllm_pd_pair(vllm_nixl, vllm_stack, vllm_logs: Path):
    servers = []
    ports = distinct_ports(4)
    for i, (name, role) in enumerate((("prefill", "kv_producer"), ("decode", "kv_consumer"))):
        servers.append(
            VllmServer(
                name,
                ports[i],
                vllm_logs / f"{name}.log",
                extra_args=["--kv-transfer-config", _nixl_config(role)],
                extra_env={
                    "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
                    "VLLM_NIXL_SIDE_CHANNEL_PORT": str(ports[2 + i]),
                },
            )
        )
    start_servers(servers)
    pair = PDPair(*servers)
    _PAIRS.append(pair)
    try:
        pair.warm_up()
    except BaseException:
        stop_servers(servers)
        raise
    yield pair
    stop_servers(servers)


# ---------------------------------------------------------------- the gateway in front of them

# vLLM on 2 shared cores can take seconds to answer /health under load: that is not a death.
REAL_HEALTH = {"interval_s": 0.5, "timeout_s": 5, "healthy_threshold": 1, "unhealthy_threshold": 3}


@pytest.fixture
def real_gateway(gateway):
    """tests/conftest.py's `gateway`, with health checks and timeouts fit for real vLLM here."""

    async def start(pools: list[dict], **sections: object):
        sections.setdefault("health", REAL_HEALTH)
        sections.setdefault("timeouts", {"first_byte_s": 120})
        return await gateway(pools, **sections)

    return start
