"""Planner tests. The golden cases run the Neuron tutorials' own launch scripts
(verbatim copies in deploy/reference/) under bash with a stub `python` that
records its argv and environment, and compare with what the planner emits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from workers.plan import Plan, PlanError, WorkerSpec, plan
from workers.plan.cli import add_plan_parser, render, run_plan, shell_script
from workers.plan.cores import format_cores, parse_cores
from workers.topology import TopologyError, load_topology, parse_topology

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "deploy" / "reference"
TOPOLOGIES = sorted((ROOT / "deploy" / "topologies").glob("*.yaml"))
SEEDS = Path(os.environ.get("PD_SEEDS_DIR", "/work/shared/seeds"))
# Knobs the seed scripts read from their caller, not settings of the server.
_NOT_SERVER_ENV = {"PATH", "PWD", "OLDPWD", "SHLVL", "_", "SEED_OUT", "SEND", "SINGLE_INSTANCE"}
_STUB = """#!/bin/bash
{ printf '%s\\0' "$(basename "$0")" "$@"; } > "$SEED_OUT/argv"
env -0 > "$SEED_OUT/env"
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def stub_bin(tmp: Path, names: tuple[str, ...] = ("python", "python3")) -> dict[str, str]:
    """A PATH whose `names` record their argv and env into tmp instead of running."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        (bin_dir / name).write_text(_STUB)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "SEED_OUT": str(tmp)}


def recorded(tmp: Path) -> tuple[list[str], dict[str, str]]:
    argv = (tmp / "argv").read_bytes().decode().split("\0")[:-1]
    pairs = [kv.split("=", 1) for kv in (tmp / "env").read_bytes().decode().split("\0") if kv]
    return argv, {k: v for k, v in pairs if k not in _NOT_SERVER_ENV}


def run_script(
    tmp: Path,
    script: Path,
    args: list[str],
    knobs: dict[str, str] | None = None,
    stubs: tuple[str, ...] = ("python", "python3"),
):
    """Run a launch script with stubbed commands; return the (argv, env) it would exec."""
    # deploy_vllm_endpoint.sh backgrounds the server; wait so the stub has written.
    body = script.read_text() + "\nwait\n"
    env = {**stub_bin(tmp, stubs), **(knobs or {})}
    subprocess.run(["bash", "-c", body, script.name, *args], env=env, cwd=tmp, check=True, capture_output=True)
    return recorded(tmp)


def run_seed(tmp: Path, script: str, args: list[str], knobs: dict[str, str] | None = None):
    return run_script(tmp, REFERENCE / script, args, knobs)


def topo(text: str):
    return parse_topology(yaml.safe_load(textwrap.dedent(text)))


def split_kv(argv: list[str]) -> tuple[list[str], dict]:
    i = argv.index("--kv-transfer-config")
    return argv[:i] + argv[i + 2 :], json.loads(argv[i + 1])


# --- golden: data parallelism (deploy_vllm_endpoint.sh) -------------------------

DP = """
python: python          # the DP tutorial launches with `python`
host: {accelerator: trainium2, cores: 64, lnc: 2}
models:
  - name: /ubuntu/model_hf/Llama-3.3-70B-Instruct/
    path: /ubuntu/model_hf/Llama-3.3-70B-Instruct/
    compiled_path: /ubuntu/traced_model/Llama-3.3-70B-Instruct/
pools:
  - name: dp
    model: /ubuntu/model_hf/Llama-3.3-70B-Instruct/
    kind: replicas
    replicas: 2
    tp: 32
    batch_size: 4
    max_model_len: 12800
    base_port: 8000
    override_neuron_config: {on_device_sampling_config: {do_sample: true, global_topk: 64}}
"""


def test_dp2_tp32_matches_deploy_vllm_endpoint(tmp_path: Path) -> None:
    workers = plan(topo(DP)).workers
    assert [(w.port, w.cores) for w in workers] == [(8000, "0-31"), (8001, "32-63")]
    for w in workers:  # ./deploy_vllm_endpoint.sh -p 8000 -c 0-31 -t 32 -b 4, then 8001 / 32-63
        args = ["-p", str(w.port), "-c", w.cores, "-t", "32", "-b", "4"]
        argv, env = run_seed(tmp_path, "deploy_vllm_endpoint.sh", args)
        assert w.argv == argv
        assert w.env == env
    assert list(workers[0].env) == [
        "NEURON_RT_INSPECT_ENABLE",
        "NEURON_RT_VIRTUAL_CORE_SIZE",
        "VLLM_NEURON_FRAMEWORK",
        "NEURON_COMPILED_ARTIFACTS",
        "NEURON_RT_VISIBLE_CORES",
        "VLLM_RPC_TIMEOUT",
    ]  # the script's own order


def test_dp_gateway_config() -> None:
    t = topo(
        DP.replace("name: /ubuntu/model_hf/Llama-3.3-70B-Instruct/", "name: llama").replace(
            "model: /ubuntu/model_hf/Llama-3.3-70B-Instruct/", "model: llama"
        )
    )
    assert plan(t).gateway_config() == {
        "listen": {"host": "127.0.0.1", "port": 8080},
        "pools": [
            {
                "name": "dp",
                "kind": "replicas",
                "models": ["llama"],
                "workers": ["http://127.0.0.1:8000", "http://127.0.0.1:8001"],
            }
        ],
    }
    assert "--served-model-name" in plan(t).workers[0].argv  # name differs from path


# --- golden: disaggregated inference (server.sh) ---------------------------------

DI = """
hosts: HOSTS
models: [{name: /m/llama, path: /m/llama, compiled_path: di_traced_model_tpTP_b4/}]
pools:
  - name: pd
    model: /m/llama
    kind: pd
    connector: neuron-legacy
    tp: TP
    batch_size: 4
    prefill: {base_port: 8100, host: P}
    decode: {base_port: 8200, host: D}
    kv_buffer_size: 2e11
"""
SINGLE = (
    DI.replace("HOSTS", "[{name: trn2, ip: 127.0.0.1}]")
    .replace("TP", "32")
    .replace("host: P", "host: trn2")
    .replace("host: D", "host: trn2")
)
MULTI = (
    DI.replace("HOSTS", "[{name: p, ip: 10.0.0.10}, {name: d, ip: 10.0.0.11}]")
    .replace("TP", "64")
    .replace("host: P", "host: p")
    .replace("host: D", "host: d")
)


def _server_sh(tmp: Path, tp: int, send_ip: str, recv_ip: str, knobs: dict[str, str]):
    # The tutorial's invocations pass --neuron-send-ip/--neuron-recv-ip, which its
    # server.sh rejects ("Unknown parameter"); it parses --send-ip/--recv-ip.
    args = [
        "--tp-degree",
        str(tp),
        "--batch-size",
        "4",
        "--model-path",
        "/m/llama",
        "--compiled-model-path",
        f"di_traced_model_tp{tp}_b4/",
        "--send-ip",
        send_ip,
        "--recv-ip",
        recv_ip,
    ]
    return run_seed(tmp, "server.sh", args, knobs)


@pytest.mark.parametrize(
    "layout, tp, ips, single, cores, offsets",
    [
        (SINGLE, 32, ("127.0.0.1", "127.0.0.1"), True, ("0-31", "32-63"), (0, 32)),
        (MULTI, 64, ("10.0.0.10", "10.0.0.11"), False, (None, None), (0, 0)),
    ],
    ids=["single-instance", "multi-instance"],
)
def test_di_1p1d_matches_server_sh(tmp_path, layout, tp, ips, single, cores, offsets) -> None:
    prefill, decode = plan(topo(layout)).workers
    assert (prefill.port, decode.port) == (8100, 8200)
    assert (prefill.cores, decode.cores) == cores
    for worker, send, offset in ((prefill, "1", offsets[0]), (decode, "", offsets[1])):
        knobs = {"SEND": send, "SINGLE_INSTANCE": "1" if single else ""}
        argv, env = _server_sh(tmp_path, tp, *ips, knobs)
        assert worker.env == env
        ours, our_kv = split_kv(worker.argv)
        theirs, their_kv = split_kv(argv)
        assert ours == ["python3", *theirs[1:]] and theirs[0] == "python3"
        # server.sh's '"$NC_OFFSET"' quoting turns the decode offset into a JSON
        # string; the planner deliberately emits the integer core index.
        assert their_kv.pop("neuron_core_offset") in (0, str(offset))
        assert our_kv.pop("neuron_core_offset") == offset
        assert our_kv == their_kv
        assert our_kv["kv_ip"] == ips[0]


def test_seed_invocation_flags_are_rejected_by_seed_script(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:
        run_seed(tmp_path, "server.sh", ["--neuron-send-ip", "127.0.0.1"])
    assert b"Unknown parameter: --neuron-send-ip" in err.value.stdout


def test_di_gateway_config() -> None:
    assert plan(topo(MULTI)).gateway_config()["pools"] == [
        {
            "name": "pd",
            "kind": "pd",
            "models": ["/m/llama"],
            "protocol": "neuron-legacy",
            "prefill": ["http://10.0.0.10:8100"],
            "decode": ["http://10.0.0.11:8200"],
        },
    ]


@pytest.mark.skipif(not SEEDS.is_dir(), reason="seed documents not available")
def test_reference_scripts_are_verbatim_seed_blocks() -> None:
    seeds = "\n".join(p.read_text() for p in SEEDS.glob("*.txt"))
    normalized = "\n".join(line.strip() for line in seeds.splitlines())
    for script in REFERENCE.glob("*.sh"):
        for line in script.read_text().splitlines():
            assert line.strip() in normalized, f"{script.name}: {line!r} not in the seeds"


# --- compile.sh ----------------------------------------------------------------

COMPILE = ROOT / "deploy" / "compile.sh"


def _compile(tmp: Path, *args: str):
    return run_script(tmp, COMPILE, ["--tp-degree", "32", "--batch-size", "4", *args], stubs=("inference_demo",))


def test_compile_di_matches_tutorial_compile_sh(tmp_path: Path) -> None:
    args = ["--tp-degree", "32", "--batch-size", "4", "--model-path", "/m"]
    seed = run_script(tmp_path, REFERENCE / "compile.sh", args, stubs=("inference_demo",))
    assert _compile(tmp_path, "--model-path", "/m") == seed
    assert "--apply-seq-ids-mask" in seed[0]


def test_compile_non_di_drops_seq_ids_mask(tmp_path: Path) -> None:
    di, _ = _compile(tmp_path, "--model-path", "/m")
    non_di, env = _compile(tmp_path, "--model-path", "/m", "--non-di")
    expected = [a for a in di if a != "--apply-seq-ids-mask"]
    assert non_di == [a.replace("di_traced", "traced") for a in expected]
    assert env["COMPILED_MODEL_PATH"] == "traced_model_tp32_b4/"


def test_compile_dp_matches_tutorial_compile_model_sh(tmp_path: Path) -> None:
    seed = run_script(tmp_path, REFERENCE / "compile_model.sh", [], stubs=("inference_demo",))
    ours = _compile(
        tmp_path,
        "--mode",
        "dp",
        "--model-path",
        "/ubuntu/model_hf/Llama-3.3-70B-Instruct/",
        "--compiled-model-path",
        "/ubuntu/traced_model/Llama-3.3-70B-Instruct/",
    )
    assert ours == seed


# --- NIXL, cpu, gpu ------------------------------------------------------------

NIXL = """
host: {accelerator: ACC, cores: 8}
models: [{name: tiny, path: .models/tiny-llama}]
pools:
  - {name: pd, model: tiny, kind: pd, connector: nixl, KNOBS
     prefill: {count: 2, base_port: 8100}, decode: {count: 1, base_port: 8200}}
"""


def test_nixl_cpu_workers() -> None:
    workers = plan(topo(NIXL.replace("ACC", "cpu").replace("KNOBS", ""))).workers
    assert [w.role for w in workers] == ["prefill", "prefill", "decode"]
    roles = [split_kv(w.argv)[1] for w in workers]
    assert roles[0] == {"kv_connector": "NixlConnector", "kv_role": "kv_producer", "kv_buffer_device": "cpu"}
    assert roles[2]["kv_role"] == "kv_consumer"
    assert [w.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] for w in workers] == ["5600", "5601", "5602"]
    assert {w.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] for w in workers} == {"127.0.0.1"}
    assert {w.env["VLLM_CPU_OMP_THREADS_BIND"] for w in workers} == {"nobind"}  # not all on one core
    knob = NIXL.replace("ACC", "cpu").replace("KNOBS", "env: {VLLM_CPU_OMP_THREADS_BIND: '0|1'},")
    assert {w.env["VLLM_CPU_OMP_THREADS_BIND"] for w in plan(topo(knob)).workers} == {"0|1"}  # a topology's wins
    argv = workers[0].argv
    assert argv[:7] == [
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        ".models/tiny-llama",
        "--served-model-name",
        "tiny",
    ]
    assert "--enforce-eager" in argv and argv[-2:] == ["--port", "8100"]
    assert not {"--device", "--use-v2-block-manager", "--override-neuron-config"} & set(argv)
    assert workers[0].cores is None


def test_nixl_cpu_workers_get_the_progress_thread_fix_and_it_works(tmp_path: Path) -> None:
    # NIXL hardcodes a busy-polling progress thread; on a CPU host it would eat a core per worker.
    workers = plan(topo(NIXL.replace("ACC", "cpu").replace("KNOBS", ""))).workers
    site = {w.env["PYTHONPATH"] for w in workers}
    assert len(site) == 1
    fake = tmp_path / "nixl_cu12"  # stands in for the binding NIXL's Python agent constructs
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "_bindings.py").write_text(
        "class nixlAgent:\n    def __init__(self, name, config):\n        self.config = config\n"
    )
    probe = (
        "import types, nixl_cu12._bindings as b\n"
        "print(b.nixlAgent('a', types.SimpleNamespace(pthrDelay=0, useProgThread=True)).config.pthrDelay)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*site, str(tmp_path)])}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "1000", out.stderr
    gpu = plan(topo(NIXL.replace("ACC", "gpu").replace("KNOBS", ""))).workers
    assert not any("PYTHONPATH" in w.env for w in gpu)


def test_nixl_gpu_pins_devices_and_uses_cuda_buffers() -> None:
    workers = plan(topo(NIXL.replace("ACC", "gpu").replace("KNOBS", "tp: 2, kv_roles: both,"))).workers
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in workers] == ["0,1", "2,3", "4,5"]
    assert {split_kv(w.argv)[1]["kv_buffer_device"] for w in workers} == {"cuda"}
    assert {split_kv(w.argv)[1]["kv_role"] for w in workers} == {"kv_both"}
    assert "--enforce-eager" not in workers[0].argv


# --- inherited core range ------------------------------------------------------


def test_core_range_from_environment_is_honoured() -> None:
    t = topo(SINGLE.replace("prefill: {base_port: 8100, host: trn2}", "prefill: {base_port: 8100, host: trn2, tp: 16}"))
    prefill, decode = plan(t, {"NEURON_RT_VISIBLE_CORES": "16-63"}).workers
    assert (prefill.cores, decode.cores) == ("16-31", "32-63")
    assert prefill.env["NEURON_RT_VISIBLE_CORES"] == "16-31"
    assert split_kv(decode.argv)[1]["neuron_core_offset"] == 32


def test_whole_inherited_range_is_kept_not_widened() -> None:
    # A Kubernetes pod granted 32-63 running a TP=32 worker: pinned to exactly that.
    t = topo(MULTI.replace("tp: 64", "tp: 32"))
    decode = plan(t, {"NEURON_RT_VISIBLE_CORES": "32-63"}).worker("pd-decode-0")
    assert decode.cores == "32-63" and decode.env["NEURON_RT_VISIBLE_CORES"] == "32-63"
    assert split_kv(decode.argv)[1]["neuron_core_offset"] == 32


def test_inherited_range_too_small() -> None:
    with pytest.raises(PlanError, match=r"tp 32 needs more .* \(16 \(restricted by NEURON_RT_VISIBLE_CORES\)"):
        plan(topo(SINGLE), {"NEURON_RT_VISIBLE_CORES": "0-15"})


# --- impossible plans ----------------------------------------------------------

_ONE_HOST = """
host: {accelerator: trainium2}
models: [{name: m, path: /m}, {name: m2, path: /m}]
pools:
"""
_A = "- {name: a, model: m, kind: replicas"  # complete with ", ...}"
_B = "- {name: b, model: m2, kind: replicas"
_PD = "- {name: a, model: m, kind: pd, connector: CONN, prefill: {PRE, base_port: 1}, decode: {DEC, base_port: 2}"


def _pd(conn: str = "nixl", pre: str = "count: 1", dec: str = "count: 1", more: str = "") -> str:
    return _PD.replace("CONN", conn).replace("PRE", pre).replace("DEC", dec) + more + "}"


@pytest.mark.parametrize(
    "pools, message",
    [
        pytest.param(
            f"{_A}, tp: 32, cores: ['0-31']}}\n{_B}, tp: 32, base_port: 9000, cores: ['16-47']}}",
            r"core range 16-47 overlaps the cores of a-replica-0 .* disjoint range",
            id="overlap",
        ),
        pytest.param(
            f"{_A}, tp: 24}}",
            r"pools\[0\]: tp 24 does not divide the 64 logical NeuronCores .* one of \[1, 2, 4, 8, 16, 32, 64\]",
            id="tp-not-divisor",
        ),
        pytest.param(
            f"{_A}, tp: 128}}",
            r"tp 128 needs more logical NeuronCores than host 'local' has \(64, lnc=2\); lower tp to at most 64",
            id="tp-too-big",
        ),
        pytest.param(
            f"{_A}, tp: 32, replicas: 3}}",
            r"has 64 logical NeuronCores but its workers need 96 .* lower replicas/count or tp",
            id="too-many-cores",
        ),
        pytest.param(
            f"{_A}, tp: 16}}\n{_B}, tp: 16}}",
            r"port 8000 on host 'local' is used by both worker a-replica-0 \(pools\[0\].base_port\) and worker b-",
            id="dup-port",
        ),
        pytest.param(
            f"{_A}, tp: 16, base_port: 8080}}",
            r"port 8080 .* the gateway \(gateway.port\) and worker a-replica-0",
            id="gateway-port",
        ),
        pytest.param(
            _pd(dec="count: 0"), r"needs at least one decode worker; set decode.count to 1 or more", id="no-decode"
        ),
        pytest.param(
            _pd(pre="count: 0"), r"needs at least one prefill worker; set prefill.count to 1 or more", id="no-prefill"
        ),
        pytest.param(
            "- {name: a, model: llama, kind: replicas}",
            r"unknown model 'llama'; add it under 'models' or use one of \['m', 'm2'\]",
            id="unknown-model",
        ),
        pytest.param(
            f"{_A}, host: nope}}", r"pools\[0\].hosts: unknown host 'nope'; known hosts: \['local'\]", id="unknown-host"
        ),
        pytest.param(
            _pd("neuron-legacy", pre="count: 2"),
            r"supports exactly 1 prefill and 1 decode .* use connector: nixl",
            id="legacy-xpyd",
        ),
        pytest.param(
            f"{_A}, replicas: 2, cores: ['0']}}",
            r"pools\[0\].cores: 1 core range\(s\) for 2 worker\(s\)",
            id="cores-count",
        ),
        pytest.param(
            f"{_A}, env: {{NEURON_RT_VISIBLE_CORES: '0-3'}}}}",
            r"do not set NEURON_RT_VISIBLE_CORES by hand; use 'cores'",
            id="hand-visible-cores",
        ),
        pytest.param(
            _pd("neuron-legacy", more=", tp: 16") + f"\n{_B}, tp: 1, base_port: 45645}}",
            r"port 45645 .* KV bootstrap of pool a \(pools\[0\].bootstrap_port\) and worker b-replica-0",
            id="bootstrap-port",
        ),
        pytest.param(
            f"{_A}, tp: 16}}\n- {{name: b, model: m, kind: replicas, tp: 16, base_port: 9000}}",
            r"pools\[1\] \(b\): model 'm' is already served by pool 'a'",
            id="shared-model",
        ),
    ],
)
def test_impossible_plans(pools: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan(topo(_ONE_HOST + textwrap.indent(pools, "  ")))


def test_cpu_rejects_neuron_only_settings() -> None:
    cpu = _ONE_HOST.replace("trainium2", "cpu")
    with pytest.raises(PlanError, match="connector neuron-legacy needs trainium .* use connector: nixl"):
        plan(topo(cpu + textwrap.indent(_pd("neuron-legacy"), "  ")))
    with pytest.raises(PlanError, match=r"pools\[0\].override_neuron_config: only applies to trainium"):
        plan(topo(cpu + f"  {_A}, override_neuron_config: {{}}}}"))
    with pytest.raises(PlanError, match=r"pools\[0\].cores: host 'local' \(cpu\) has no cores to pin"):
        plan(topo(cpu + f"  {_A}, cores: ['0']}}"))


_REST = "\nmodels: [{name: m, path: /m}]\npools: [{name: a, model: m, kind: replicas}]"


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param(
            f"{_ONE_HOST}  {_A}, tp: 0}}", r"pools\[0\]\.tp: Input should be greater than or equal to 1", id="tp-zero"
        ),
        pytest.param(
            f"{_ONE_HOST}  {_A}, replica: 2}}", r"pools\[0\]\.replica: Extra inputs are not permitted", id="unknown-key"
        ),
        pytest.param(
            _ONE_HOST + "  " + _pd(pre="count: 1").replace(", base_port: 1", ""),
            r"pools\[0\]\.prefill\.base_port: Field required",
            id="missing-port",
        ),
        pytest.param(
            _ONE_HOST + "  " + _pd("mooncake"),
            r"pools\[0\]\.connector: Input should be 'neuron-legacy' or 'nixl'",
            id="bad-connector",
        ),
        pytest.param("host: {accelerator: tpu}" + _REST, r"host\.accelerator: Input should be", id="bad-accelerator"),
        pytest.param("hosts: []" + _REST, r"needs at least one host", id="no-hosts"),
        pytest.param(
            "host: {accelerator: trainium1, lnc: 2}" + _REST,
            r"host: .*lnc: only trainium2 supports lnc=2",
            id="trn1-lnc2",
        ),
    ],
)
def test_malformed_topologies_name_the_field(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse_topology(yaml.safe_load(text))


# --- emission ------------------------------------------------------------------


def test_every_example_topology_plans() -> None:
    assert {p.name for p in TOPOLOGIES} >= {
        "dp2-tp32.yaml",
        "di-1p1d-single.yaml",
        "di-1p1d-multi.yaml",
        "nixl-1p1d-cpu.yaml",
        "sim-1p1d-2dp.yaml",
    }
    config = pytest.importorskip("gateway.config")
    for path in TOPOLOGIES:
        result = plan(load_topology(path))
        assert result.workers, path
        config.parse_config(result.gateway_config())  # the gateway accepts what we emit


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_shell_scripts_parse_and_reproduce_the_plan(tmp_path: Path, path: Path) -> None:
    result = plan(load_topology(path))
    files = render(result, "shell")
    assert set(files) == {f"{w.name}.sh" for w in result.workers} | {"gateway.yaml"}
    assert yaml.safe_load(files["gateway.yaml"]) == result.gateway_config()
    for w in result.workers:
        script = tmp_path / f"{w.name}.sh"
        script.write_text(shell_script(w))
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert run_script(tmp_path, script, []) == (w.argv, w.env)


def test_decode_worker_follows_device_plugin_cores() -> None:
    # A pod granted cores 32-63 by the Neuron device plugin: the planner pins inside them and
    # the NeuronConnector decode worker gets the matching core offset.
    t = topo("""
        hosts:
          - {name: p, accelerator: trainium2, cores: 64, ip: 10.0.0.1}
          - {name: d, accelerator: trainium2, cores: 64, ip: 10.0.0.2}
        models: [{name: m, path: /m}]
        pools:
          - {name: pd, model: m, kind: pd, connector: neuron-legacy, tp: 32,
             prefill: {base_port: 8100, host: p}, decode: {base_port: 8200, host: d}}
    """)
    decode = plan(t, {"NEURON_RT_VISIBLE_CORES": "32-63"}).worker("pd-decode-0")
    assert decode.env["NEURON_RT_VISIBLE_CORES"] == "32-63"
    assert split_kv(decode.argv)[1]["neuron_core_offset"] == 32


def test_ports_count_per_host() -> None:
    t = topo("""
        hosts: [{name: a, ip: 10.0.0.1}, {name: b, ip: 10.0.0.2}]
        models: [{name: m, path: /m}]
        pools: [{name: dp, model: m, kind: replicas, replicas: 4, tp: 32, hosts: [a, b]}]
    """)
    assert [w.url for w in plan(t).workers] == [
        "http://10.0.0.1:8000",
        "http://10.0.0.2:8000",
        "http://10.0.0.1:8001",
        "http://10.0.0.2:8001",
    ]


def test_readme_schema_example_plans() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    block = readme.split("## Topology schema", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    result = plan(parse_topology(yaml.safe_load(block)))
    assert [(w.name, w.host, w.cores) for w in result.workers] == [
        ("dp-replica-0", "dp-host", "0-31"),
        ("dp-replica-1", "dp-host", "32-63"),
        ("pd-prefill-0", "prefill-host", None),
        ("pd-decode-0", "decode-host", None),
    ]


def _cli(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    add_plan_parser(parser.add_subparsers(dest="command"))
    return run_plan(parser.parse_args(["plan", *args]))


def test_cli_writes_executable_scripts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _cli([str(ROOT / "deploy/topologies/dp2-tp32.yaml"), "--emit", "shell", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dp-replica-0.sh", "dp-replica-1.sh", "gateway.yaml"]
    assert os.access(out / "dp-replica-0.sh", os.X_OK)
    assert "export NEURON_RT_VISIBLE_CORES=32-63" in (out / "dp-replica-1.sh").read_text()


def test_cli_table_json_and_errors(tmp_path: Path, capsys) -> None:
    dp = str(ROOT / "deploy/topologies/dp2-tp32.yaml")
    assert _cli([dp, "--ignore-env"]) == 0
    assert "dp-replica-1  dp    replica  trn2  8001  32-63" in capsys.readouterr().out
    assert _cli([dp, "--emit", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["workers"][1]["cores"] == "32-63"
    bad = tmp_path / "bad.yaml"
    bad.write_text(_ONE_HOST + "  - {name: a, model: nope, kind: replicas}\n")
    assert _cli([str(bad)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_core_ranges_round_trip() -> None:
    assert parse_cores("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert format_cores(parse_cores("0-3,8,10-11")) == "0-3,8,10-11"
    with pytest.raises(PlanError, match="bad core range"):
        parse_cores("3-1")


def test_plan_is_data() -> None:
    result = plan(topo(DP))
    assert isinstance(result, Plan) and isinstance(result.workers[0], WorkerSpec)
    assert json.loads(json.dumps(result.to_dict()))["gateway"]["listen"]["port"] == 8080
