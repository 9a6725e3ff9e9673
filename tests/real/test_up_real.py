"""`pd-gateway up deploy/topologies/nixl-1p1d-cpu.yaml --engine vllm`: the shipped CPU
topology, as planned, brings up a real 1P1D NixlConnector pair behind the gateway;
a completion through the gateway has its prompt computed by the prefill worker and
shipped to the decode worker; SIGTERM stops every process of both vLLM groups.

Only the test environment is added (as tests/real/conftest.py does for its own
servers): one compute thread per server, no core binding, offline hub, and the
sitecustomize that stops NIXL's progress thread from spinning on a 2-core machine.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.test_up import Up, assert_gone, free_base_ports
from workers.launch import group_members

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("PD_TINY_MODEL", ROOT / ".models" / "tiny-llama"))
PYTHON = os.environ.get("PD_VLLM_PYTHON", sys.executable)
STARTUP_TIMEOUT_S = float(os.environ.get("PD_VLLM_STARTUP_TIMEOUT", "300"))
EXTERNAL = re.compile(r'^vllm:prompt_tokens_by_source_total\{[^}]*source="external_kv_transfer"[^}]*\} (\S+)$', re.M)


def cpu_topology(tmp_path: Path) -> tuple[Path, str]:
    """The shipped topology with free ports, this interpreter and the tiny model's path."""
    data = yaml.safe_load((ROOT / "deploy" / "topologies" / "nixl-1p1d-cpu.yaml").read_text())
    gw, prefill, decode, side = free_base_ports(4)
    data["gateway"]["port"] = gw
    data["python"] = PYTHON
    data["models"][0]["path"] = str(MODEL_DIR)
    pool = data["pools"][0]
    pool["prefill"]["base_port"], pool["decode"]["base_port"] = prefill, decode
    pool["side_channel_base_port"] = side
    path = tmp_path / "nixl-1p1d-cpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data["models"][0]["name"]


def worker_cpus(state: dict[str, dict]) -> dict[str, list[int]]:
    """The CPUs each worker's VLLM::Worker process may run on."""
    cpus = {}
    for name, w in state.items():
        for pid in group_members(w["pid"]):
            if Path(f"/proc/{pid}/comm").read_text().startswith("VLLM::Worker"):
                cpus[name] = sorted(os.sched_getaffinity(pid))
    return cpus


def external_prompt_tokens(url: str) -> float:
    return sum(float(v) for v in EXTERNAL.findall(httpx.get(f"{url}/metrics", timeout=10).text))


def test_up_brings_up_nixl_1p1d_on_cpu_and_serves_through_the_gateway(
    vllm_nixl: None, vllm_server_env: dict[str, str | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in vllm_server_env.items():  # `up` passes its environment on to the workers
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    topology, model = cpu_topology(tmp_path)
    t0 = time.monotonic()
    up = Up(tmp_path, topology, "--engine", "vllm", "--ready-timeout", str(STARTUP_TIMEOUT_S))
    try:
        url = up.wait_serving(STARTUP_TIMEOUT_S + 30).split()[3]
        startup_s = time.monotonic() - t0
        state = up.state()
        assert {w["state"] for w in state.values()} == {"healthy"}
        # the P->D pair was warmed up before "serving" (workers/warmup.py) ...
        assert "warming up 1 prefill->decode pair(s)" in up.stderr and ": warm (transfers: " in up.stderr
        # ... and no worker is pinned to one core by the NixlConnector (workers/nixl_site)
        assert worker_cpus(state) == {name: sorted(os.sched_getaffinity(0)) for name in state}
        decode = state["pd-decode-0"]["url"]
        before = external_prompt_tokens(decode)
        # long enough (~2 KB, over the pool's disaggregate_min_tokens) to go through the prefill
        prompt = " ".join(["The old man watches the long road"] * 60)
        body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8 and r.json()["choices"][0]["text"]
        deadline = time.monotonic() + 10  # metrics reach the API process a moment later
        while external_prompt_tokens(decode) <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert external_prompt_tokens(decode) > before, "decode computed the prompt itself: no KV transfer"
        print(f"up: both vLLM workers healthy and gateway serving after {startup_s:.1f}s")
    finally:
        pids = up.all_pids()
        assert up.terminate(timeout_s=60) == 0, up.stderr[-3000:]
    assert len(pids) == 2
    assert_gone(pids)
