"""`pd-gateway up`: the real CLI as a subprocess, on simulated workers.

Each `up` runs on a temporary copy of a topology with free ports and its own core
registry directory (PD_SIM_CORE_DIR), so tests never collide with each other or with
anything else on the machine. Every wait has a deadline.
"""

from __future__ import annotations

import io
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pdcli.up import UpError, engine_specs, is_local, local_python
from pdcli.up_progress import Progress
from tests.conftest import sse_payloads, stream_text
from workers.launch import bindable, group_members
from workers.plan import plan
from workers.plan.launch import WorkerSpec
from workers.sim.cores import CoreInUse, claim_cores
from workers.supervise import RestartPolicy, Worker, log_tail
from workers.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = ROOT / "deploy" / "topologies"
START_S = 60.0  # generous: the machine may be busy with other suites


# ---------------------------------------------------------------- helpers


def free_base_ports(n: int, width: int = 2) -> list[int]:
    """`n` distinct bases, each with `width` consecutive free ports (replicas count up), below the
    kernel's ephemeral range (32768-60999 here), as tests/real's distinct_ports: a bind(0) in a
    worker (vLLM's internal sockets) could otherwise take the gateway's port before `up` binds it."""
    bases: list[int] = []
    while len(bases) < n:
        base = random.randrange(20000, 32000 - width)
        span = range(base, base + width)
        if all(bindable(p) for p in span) and not any(b in span for b in bases):
            bases.append(base)
    return bases


def sim_topology(tmp_path: Path, prefill_args: list[str] | None = None) -> tuple[Path, int]:
    """deploy/topologies/sim-1p1d-2dp.yaml with free ports; returns (path, gateway port)."""
    data = yaml.safe_load((TOPOLOGIES / "sim-1p1d-2dp.yaml").read_text())
    gw, prefill, decode, dp = free_base_ports(4)
    data["gateway"]["port"] = gw
    pd_pool, dp_pool = data["pools"]
    pd_pool["prefill"]["base_port"], pd_pool["decode"]["base_port"] = prefill, decode
    if prefill_args:
        pd_pool["prefill"]["extra_args"] = prefill_args
    dp_pool["base_port"] = dp
    path = tmp_path / f"topology-{gw}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, gw


class Up:
    """One `python -m pdcli up ...` with stdout piped and stderr in a file."""

    def __init__(self, tmp_path: Path, topology: Path, *args: str, core_dir: Path | None = None) -> None:
        self.log_dir = tmp_path / f"logs-{topology.stem}"
        self.stderr_path = tmp_path / f"up-{topology.stem}.stderr"
        env = {**os.environ, "PD_SIM_CORE_DIR": str(core_dir or tmp_path / "cores")}
        env.pop("NEURON_RT_VISIBLE_CORES", None)
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pdcli", "up", str(topology), "--log-dir", str(self.log_dir), *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.stdout = ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_serving(self, timeout_s: float = START_S) -> str:
        """Read stdout until the 'serving URL' line; returns that line."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline().decode()
                if not line:
                    break
                self.stdout += line
                if line.startswith("pd-gateway up: serving "):
                    return line
        raise AssertionError(f"up did not serve (rc {self.proc.poll()}); stderr:\n{self.stderr[-3000:]}")

    def state(self) -> dict[str, dict[str, Any]]:
        data = json.loads((self.log_dir / "workers.json").read_text())
        return {w["name"]: w for w in data["workers"]}

    def wait_state(self, check: Any, timeout_s: float, what: str) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state()
            if check(state):
                return state
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {json.dumps(self.state(), indent=1)}")

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.stdout is not None:
                self.stdout += self.proc.stdout.read().decode()
                self.proc.stdout.close()

    def all_pids(self) -> list[int]:
        return [pid for w in self.state().values() for pid in w["pids"]]


def complete(url: str, model: str, **body: Any) -> httpx.Response:
    payload = {"model": model, "prompt": "hello there", "max_tokens": 5, **body}
    return httpx.post(f"{url}/v1/completions", json=payload, timeout=20)


def complete_eventually(url: str, model: str, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        r = complete(url, model)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.3)


def assert_gone(pids: list[int]) -> None:
    for pid in pids:
        assert not group_members(pid), f"process group {pid} still has {group_members(pid)}"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ---------------------------------------------------------------- a running 1P1D + 2 DP topology


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, str]]:
    tmp = tmp_path_factory.mktemp("up")
    topology, _ = sim_topology(tmp)
    up = Up(tmp, topology, "--ready-timeout", "20")
    try:
        line = up.wait_serving()
        yield up, line.split()[3]
    finally:
        pids = up.all_pids() if (up.log_dir / "workers.json").exists() else []
        assert up.terminate() == 0, up.stderr[-3000:]
        assert_gone(pids)


def test_up_starts_every_worker_and_serves_both_pools(running: tuple[Up, str]) -> None:
    up, url = running
    state = up.state()
    assert sorted(state) == ["dp-replica-0", "dp-replica-1", "pd-decode-0", "pd-prefill-0"]
    assert {w["state"] for w in state.values()} == {"healthy"}
    assert [state[n]["cores"] for n in ("pd-prefill-0", "pd-decode-0", "dp-replica-0", "dp-replica-1")] == [
        "0-15",
        "16-31",
        "32-47",
        "48-63",
    ]
    for model in ("sim-pd", "sim-dp"):
        r = complete(url, model)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model and r.json()["usage"]["completion_tokens"] == 5
        streamed = complete(url, model, stream=True)
        assert streamed.status_code == 200 and stream_text(sse_payloads(streamed.content))
    for _ in range(4):
        assert complete(url, "sim-dp").status_code == 200
    stats = {name: httpx.get(f"{w['url']}/sim/stats", timeout=5).json() for name, w in state.items()}
    assert stats["pd-prefill-0"]["kv_sent"] >= 2  # the PD path: prefill handed KV to decode
    assert stats["pd-decode-0"]["kv_received"] >= 2
    assert stats["dp-replica-0"]["completed"] and stats["dp-replica-1"]["completed"]
    assert stats["pd-prefill-0"]["config"]["neuron_cores"] == "0-15"
    assert "[up] pd-prefill-0" in up.stderr and "healthy" in up.stderr  # plain lines: stderr is a file
    # the NIXL pool's P->D pair was warmed up before "serving" (workers/warmup.py)
    assert "warming up 1 prefill->decode pair(s)" in up.stderr and ": warm (transfers: " in up.stderr


def test_killed_worker_group_is_restarted_and_serves_again(running: tuple[Up, str]) -> None:
    up, url = running
    victim = up.state()["pd-prefill-0"]
    os.killpg(victim["pid"], signal.SIGKILL)
    state = up.wait_state(
        lambda s: s["pd-prefill-0"]["state"] == "healthy" and s["pd-prefill-0"]["pid"] != victim["pid"],
        timeout_s=20,
        what="pd-prefill-0 to come back",
    )
    back = state["pd-prefill-0"]
    assert back["restarts"] == victim["restarts"] + 1 and back["last_exit"] == "killed by SIGKILL"
    assert_gone([victim["pid"]])
    r = complete_eventually(url, "sim-pd", timeout_s=20)  # the gateway's health check re-admits it
    assert r.status_code == 200, r.text
    assert "restarting" in up.stderr


def test_second_up_on_the_same_cores_is_refused_with_a_report(running: tuple[Up, str], tmp_path: Path) -> None:
    first, url = running
    holder = first.state()["pd-prefill-0"]["pid"]
    topology, _ = sim_topology(tmp_path)  # new ports, same cores, same registry
    second = Up(tmp_path, topology, "--ready-timeout", "10", core_dir=first.log_dir.parent / "cores")
    try:
        rc = second.proc.wait(timeout=45)
    finally:
        second.terminate()
    err = second.stderr
    assert rc == 1, err[-3000:]
    assert "no worker came up" in err
    assert "worker pd-prefill-0 FAILED" in err and "exit code 1" in err
    assert f"NeuronCore 0 is already in use by pid {holder} (as the Neuron runtime would refuse)" in err
    assert "died 3 time(s) in a row before its health check passed" in err
    assert_gone(second.all_pids())
    assert complete(url, "sim-dp").status_code == 200  # the first topology is untouched


# ---------------------------------------------------------------- start-up failure, shutdown


def test_worker_that_cannot_start_is_reported_and_the_rest_is_served(tmp_path: Path) -> None:
    topology, _ = sim_topology(tmp_path, prefill_args=["--bogus"])
    up = Up(tmp_path, topology, "--ready-timeout", "10")
    try:
        line = up.wait_serving()
        url = line.split()[3]
        assert "3 worker(s) up, 1 failed" in line
        err = up.stderr
        assert "worker pd-prefill-0 FAILED" in err and "exit code 2" in err
        assert "unrecognized arguments: --bogus" in err and "--bogus --port" in err  # log tail and command
        assert up.state()["pd-prefill-0"]["state"] == "failed"
        assert len(up.state()["pd-prefill-0"]["pids"]) == 3
        assert complete(url, "sim-dp").status_code == 200
        assert complete(url, "sim-pd").status_code == 200  # its decode serves alone (decode-local fallback)
    finally:
        pids = up.all_pids()
        assert up.terminate() == 0
    assert_gone(pids)


def test_max_restarts_stops_restarting(tmp_path: Path) -> None:
    topology, _ = sim_topology(tmp_path)
    up = Up(tmp_path, topology, "--max-restarts", "0")
    try:
        up.wait_serving()
        os.killpg(up.state()["dp-replica-1"]["pid"], signal.SIGKILL)
        state = up.wait_state(lambda s: s["dp-replica-1"]["state"] == "failed", 10, "dp-replica-1 to be given up")
        assert state["dp-replica-1"]["restarts"] == 0
        assert "reached --max-restarts 0" in up.stderr
    finally:
        assert up.terminate() == 0


def test_sigterm_drains_streams_then_stops_every_group(tmp_path: Path) -> None:
    topology, _ = sim_topology(tmp_path)
    up = Up(tmp_path, topology)
    url = up.wait_serving().split()[3]
    started, body = threading.Event(), bytearray()

    def stream() -> None:  # 40 tokens at 20 ms: about a second on the wire
        payload = {"model": "sim-pd", "prompt": "hello", "max_tokens": 40, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=payload, timeout=20) as r:
            for chunk in r.iter_bytes():
                body.extend(chunk)
                started.set()

    client = threading.Thread(target=stream)
    client.start()
    assert started.wait(20), "the stream did not start"
    pids = up.all_pids()
    t0 = time.monotonic()
    assert up.terminate(timeout_s=30) == 0
    stop_s = time.monotonic() - t0
    client.join(10)
    payloads = sse_payloads(bytes(body))
    assert sum(1 for p in payloads if isinstance(p, dict) and "choices" in p) == 40
    assert not any(isinstance(p, dict) and "error" in p for p in payloads)
    assert len(pids) == 4
    assert_gone(pids)
    assert {w["state"] for w in up.state().values()} == {"stopped"}
    assert "all workers stopped" in up.stderr
    assert stop_s < 20, stop_s  # drain (under a second of stream) and four sim groups


def test_engine_sim_runs_a_trainium_topology(tmp_path: Path) -> None:
    """The DI tutorial's neuron-legacy 1P1D, simulated: decode gets --kv-peers, cores 0-31 / 32-63."""
    data = yaml.safe_load((TOPOLOGIES / "di-1p1d-single.yaml").read_text())
    gw, prefill, decode = free_base_ports(3)
    data["gateway"] = {"host": "127.0.0.1", "port": gw}
    data["pools"][0]["prefill"]["base_port"], data["pools"][0]["decode"]["base_port"] = prefill, decode
    path = tmp_path / "di.yaml"
    path.write_text(yaml.safe_dump(data))
    up = Up(tmp_path, path, "--engine", "sim")
    try:
        url = up.wait_serving().split()[3]
        r = complete(url, "llama-3.3-70b")
        assert r.status_code == 200, r.text
        state = up.state()
        assert (state["pd-prefill-0"]["cores"], state["pd-decode-0"]["cores"]) == ("0-31", "32-63")
        stats = httpx.get(f"{state['pd-decode-0']['url']}/sim/stats", timeout=5).json()
        assert stats["kv_received"] == 1 and stats["config"]["kv_peers"] == [state["pd-prefill-0"]["url"]]
    finally:
        assert up.terminate() == 0


def test_bad_topology_exits_2_before_starting_anything(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("host: {accelerator: sim}\nmodels: []\npools: []\n")
    up = Up(tmp_path, path)
    assert up.proc.wait(timeout=30) == 2
    up.terminate()
    assert "pd-gateway up: invalid topology" in up.stderr
    assert not up.log_dir.exists()


# ---------------------------------------------------------------- units


def test_core_registry_refuses_overlap_and_releases_on_exit(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from workers.sim.cores import claim_cores; "
            "claim_cores('4-7', Path(sys.argv[1])); print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(CoreInUse, match=rf"NeuronCore 6 is already in use by pid {holder.pid} "):
            claim_cores("6-9", tmp_path)
        with pytest.raises(CoreInUse):  # a refused claim holds nothing: 8-9 stay free
            claim_cores("3-5", tmp_path)
        mine = claim_cores("0-3,8-9", tmp_path)
        holder.kill()
        holder.wait(10)
        again = claim_cores("4-7", tmp_path)  # the dead holder's claim vanished with it
    finally:
        holder.kill()
        holder.wait(10)
    with pytest.raises(CoreInUse, match="NeuronCore 0 "):  # one process, two claims: refused too
        claim_cores("0", tmp_path)
    mine.release()
    again.release()
    claim_cores("0-9", tmp_path).release()


def test_restart_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy()
    assert [policy.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_log_tail_shows_the_latest_attempt_only(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("=== 10:00:00 start: a\nold error\n=== 10:00:02 start: a\nnew 1\nnew 2\nnew 3\n")
    assert log_tail(log, 2) == "new 2\nnew 3"
    assert log_tail(log, 20) == "new 1\nnew 2\nnew 3"


def test_engine_sim_rewrites_vllm_argv_and_engine_vllm_refuses_sim_hosts() -> None:
    dp = load_topology(TOPOLOGIES / "dp2-tp32.yaml")
    specs = engine_specs(dp, plan(dp), "sim")
    first = specs[0].argv
    assert first[:3] == [sys.executable, "-m", "workers.sim"]
    assert first[first.index("--neuron-cores") + 1] == "0-31"
    assert "--device" not in first and "--override-neuron-config" not in first
    assert engine_specs(dp, plan(dp), "vllm") == plan(dp).workers  # vllm: the plan as-is
    sim = load_topology(TOPOLOGIES / "sim-1p1d-2dp.yaml")
    planned = plan(sim)
    assert engine_specs(sim, planned, "sim")[0].argv[1:] == planned.workers[0].argv[1:]  # the planner's sim argv
    with pytest.raises(UpError, match="accelerator: sim"):
        engine_specs(sim, planned, "vllm")


def test_up_runs_vllm_on_its_own_interpreter_unless_the_topology_names_one(tmp_path: Path) -> None:
    cpu = load_topology(TOPOLOGIES / "nixl-1p1d-cpu.yaml")
    assert "python" not in cpu.model_fields_set
    assert plan(cpu).workers[0].argv[0] == "python3"  # what `pd-gateway plan` writes for any host
    assert all(w.argv[0] == sys.executable for w in plan(local_python(cpu)).workers)
    named = tmp_path / "named.yaml"
    named.write_text((TOPOLOGIES / "nixl-1p1d-cpu.yaml").read_text() + "python: /opt/venv/bin/python\n")
    assert all(w.argv[0] == "/opt/venv/bin/python" for w in plan(local_python(load_topology(named))).workers)


def test_is_local() -> None:
    assert is_local("127.0.0.1") and is_local("localhost")
    assert not is_local("192.0.2.1")  # TEST-NET-1: never assigned
    assert not is_local("no-such-host.invalid")


def test_progress_redraws_in_place_on_a_terminal_and_logs_lines_otherwise() -> None:
    spec = WorkerSpec("pd-prefill-0", "pd", "prefill", "m", "local", 8100, "0-15", ["x"], {}, "http://127.0.0.1:8100")
    worker = Worker(spec, Path("/dev/null"))
    tty = io.StringIO()
    live = Progress(tty, [worker], live=True)
    live.changed(worker)
    worker.state, worker.healthy_after_s = "healthy", 1.25
    live.changed(worker)
    live.message("a report")
    out = tty.getvalue()
    assert out.count("\x1b[1A") == 2  # cursor back over the one-line block before each redraw
    assert "pd-prefill-0  prefill  :8100   cores 0-15  healthy       1.2s" in out
    assert out.index("a report") < out.rindex("healthy")  # the block is drawn again below it
    log = io.StringIO()
    plain = Progress(log, [worker], live=False)
    plain.changed(worker)
    worker.state = "stopped"
    plain.changed(worker)  # shutdown is summed up by the caller, not per worker
    assert log.getvalue() == "[up] pd-prefill-0  prefill  :8100   cores 0-15  healthy       1.2s\n"


def test_a_worker_whose_port_another_process_holds_fails_and_is_never_routed_to(tmp_path: Path) -> None:
    topology, _ = sim_topology(tmp_path)
    port = yaml.safe_load(topology.read_text())["pools"][1]["base_port"]  # dp-replica-0's
    squatter = subprocess.Popen(
        [sys.executable, "-m", "workers.sim", "--host", "127.0.0.1", "--port", str(port), "--model", "sim-dp"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        foreign = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_S
        while bindable(port):  # the squatter is listening
            assert time.monotonic() < deadline and squatter.poll() is None
            time.sleep(0.1)
        up = Up(tmp_path, topology, "--ready-timeout", "10")
        try:
            line = up.wait_serving()
            url = line.split()[3]
            assert "3 worker(s) up, 1 failed and not routed to" in line
            assert f"port {port} is already in use by another process" in up.stderr
            for _ in range(6):
                assert complete(url, "sim-dp").status_code == 200
            assert httpx.get(f"{foreign}/sim/stats").json()["requests_total"] == 0
        finally:
            assert up.terminate() == 0
    finally:
        squatter.terminate()
        squatter.wait(10)
