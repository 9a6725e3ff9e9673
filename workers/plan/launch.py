"""Command line and environment of one planned worker.

Neuron launches reproduce the AWS tutorials: deploy_vllm_endpoint.sh (data
parallelism) for replicas and nixl pools, server.sh (disaggregated inference)
for neuron-legacy pools. Both orders are kept so diffs against the seeds stay
readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.plan.cores import format_cores, visible_var
from workers.topology import (
    DEFAULT_ENTRYPOINT,
    SIM_ENTRYPOINT,
    HostSpec,
    ModelSpec,
    PDPool,
    PlanError,
    ReplicasPool,
    RoleSpec,
)

Pool = ReplicasPool | PDPool
NIXL_CPU_SITE = str(Path(__file__).parent.parent / "nixl_site")  # its sitecustomize.py tames NIXL's progress thread


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    pool: str
    role: str  # "replica" | "prefill" | "decode"
    model: str
    host: str
    port: int
    cores: str | None  # e.g. "0-31"; None when the worker owns its whole host
    argv: list[str]
    env: dict[str, str]
    url: str


@dataclass
class Slot:
    """One worker placed on a host, before its command line is built."""

    pool: Pool
    pool_index: int
    role: str
    index: int  # within its role
    host: HostSpec
    tp: int
    port: int
    explicit_cores: str | None
    role_spec: RoleSpec | None = None
    cores: list[int] | None = None
    side_channel_port: int | None = None

    @property
    def name(self) -> str:
        return f"{self.pool.name}-{self.role}-{self.index}"

    @property
    def field(self) -> str:
        where = f"pools[{self.pool_index}]"
        return f"{where}.{self.role}" if self.role_spec is not None else where

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{self.port}"

    @property
    def legacy(self) -> bool:
        return isinstance(self.pool, PDPool) and self.pool.connector == "neuron-legacy"


def build_worker(
    python: str, global_env: dict[str, str], model: ModelSpec, slot: Slot, slots: list[Slot]
) -> WorkerSpec:
    cores = format_cores(slot.cores) if slot.cores is not None else None
    if slot.host.accelerator == "sim":
        argv, env = _sim_argv(python, model, slot, slots, cores), {}
    else:
        argv = _vllm_argv(python, model, slot, _kv_transfer_config(slot, slots))
        env = _base_env(model, slot, slots, cores)
    role_env = slot.role_spec.env if slot.role_spec else {}
    for layer in (global_env, slot.pool.env, role_env):
        if slot.host.tracks_cores and visible_var(slot.host) in layer:
            raise PlanError(
                f"{slot.field}.env: do not set {visible_var(slot.host)} by hand; use 'cores' "
                "(or export it before planning to confine the planner to those cores)"
            )
        env.update(layer)
    return WorkerSpec(
        name=slot.name,
        pool=slot.pool.name,
        role=slot.role,
        model=model.name,
        host=slot.host.name,
        port=slot.port,
        cores=cores,
        argv=argv,
        env=env,
        url=slot.url,
    )


def _extra_args(slot: Slot) -> list[str]:
    return slot.pool.extra_args + (slot.role_spec.extra_args if slot.role_spec else [])


def _vllm_argv(python: str, model: ModelSpec, slot: Slot, kv: str | None) -> list[str]:
    pool, host = slot.pool, slot.host
    argv = [python, "-m", pool.entrypoint or DEFAULT_ENTRYPOINT, "--model", model.path]
    if model.name != model.path:
        argv += ["--served-model-name", model.name]
    argv += ["--max-num-seqs", str(pool.batch_size), "--max-model-len", str(pool.max_model_len)]
    argv += ["--tensor-parallel-size", str(slot.tp)]
    if host.is_neuron and pool.engine == "vllm-neuron":
        if pool.override_neuron_config is not None:
            argv += ["--additional-config", _additional_config(slot)]
    elif host.is_neuron:
        argv += ["--device", "neuron", "--use-v2-block-manager"]
        argv += ["--override-neuron-config", _neuron_override(pool)]
    elif pool.override_neuron_config is not None:
        raise PlanError(
            f"{slot.field}.override_neuron_config: only applies to trainium hosts, but "
            f"{slot.name} runs on {host.accelerator} host {host.name!r}; remove it"
        )
    elif host.accelerator == "cpu":
        argv += ["--enforce-eager"]
    if kv is not None:
        argv += ["--kv-transfer-config", kv]
    return argv + _extra_args(slot) + ["--port", str(slot.port)]


def _sim_argv(python: str, model: ModelSpec, slot: Slot, slots: list[Slot], cores: str | None) -> list[str]:
    """Flags of the simulated engine (workers/sim/config.py)."""
    pool = slot.pool
    argv = [python, "-m", pool.entrypoint or SIM_ENTRYPOINT, "--host", slot.host.ip]
    argv += ["--model", model.name, "--max-model-len", str(pool.max_model_len)]
    argv += ["--role", "both" if slot.role == "replica" else slot.role]
    if isinstance(pool, PDPool):
        argv += ["--kv-protocol", pool.connector]
        if slot.legacy and slot.role == "decode":
            peers = [s.url for s in slots if s.pool is pool and s.role == "prefill"]
            argv += ["--kv-peers", ",".join(peers)]
    if cores is not None:
        argv += ["--neuron-cores", cores]
    return argv + _extra_args(slot) + ["--port", str(slot.port)]


def _neuron_override(pool: Pool) -> str:
    value = pool.override_neuron_config
    if value is None:
        return "{}"  # server.sh passes an empty override
    return value if isinstance(value, str) else json.dumps(value)


def _additional_config(slot: Slot) -> str:
    """vllm-neuron takes NxDI's neuron_config overrides inside vLLM's --additional-config."""
    value = slot.pool.override_neuron_config
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise PlanError(f"{slot.field}.override_neuron_config: not JSON ({err})") from None
    return json.dumps({"override_neuron_config": value})


def _kv_transfer_config(slot: Slot, slots: list[Slot]) -> str | None:
    pool = slot.pool
    if not isinstance(pool, PDPool):
        return None
    producer = slot.role == "prefill"
    if pool.connector == "nixl":
        split = "kv_producer" if producer else "kv_consumer"
        config: dict[str, object] = {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both" if pool.kv_roles == "both" else split,
            "kv_buffer_device": "cuda" if slot.host.accelerator == "gpu" else "cpu",
        }
        if slot.host.is_neuron and pool.engine == "vllm-neuron":
            # Neuron DI moves KV through host memory with NIXL's LIBFABRIC backend (EFA).
            config["kv_connector_extra_config"] = {"backends": ["LIBFABRIC"]}
        return json.dumps(config)
    if not slot.host.is_neuron:
        raise PlanError(
            f"pools[{slot.pool_index}] ({pool.name}): connector neuron-legacy needs trainium "
            f"(or sim) hosts, but {slot.name} is on {slot.host.accelerator}; use connector: nixl"
        )
    config = {
        "kv_connector": "NeuronConnector",
        "kv_buffer_device": "cpu",
        "kv_role": "kv_producer" if producer else "kv_consumer",
        "kv_rank": 0 if producer else 1,
        "kv_parallel_size": 2,
        "kv_buffer_size": pool.kv_buffer_size,
        "kv_ip": _peer(slots, pool, "prefill").host.ip,
        # server.sh quotes the decode offset into a JSON string ("neuron_core_offset":
        # "32"); it is a core index, so emit an int.
        "neuron_core_offset": slot.cores[0] if slot.cores else 0,
    }
    return json.dumps(config)


def _peer(slots: list[Slot], pool: PDPool, role: str) -> Slot:
    return next(s for s in slots if s.pool is pool and s.role == role)


def _base_env(model: ModelSpec, slot: Slot, slots: list[Slot], cores: str | None) -> dict[str, str]:
    host = slot.host
    if slot.legacy:
        env = _legacy_env(model, slot, slots)
    elif host.is_neuron:
        env = _neuron_env(model, slot)
    else:
        env = {}
    if slot.cores is not None and cores is not None:
        env[visible_var(host)] = cores if host.is_neuron else ",".join(map(str, slot.cores))
    if host.is_neuron and not slot.legacy:
        env["VLLM_RPC_TIMEOUT"] = "100000"
    if slot.side_channel_port is not None:
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = host.ip
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(slot.side_channel_port)
        if host.accelerator == "cpu":  # without it NIXL's progress thread spins a whole core
            env["PYTHONPATH"] = NIXL_CPU_SITE
            # vLLM's default (auto) binds every server to the same cores; a prefill spins while
            # it holds a KV lease and so starved the decode that was to read it (docs/real-vllm.md)
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return env


def _neuron_env(model: ModelSpec, slot: Slot) -> dict[str, str]:
    """deploy_vllm_endpoint.sh, in its order (VISIBLE_CORES and RPC timeout follow)."""
    env = {"NEURON_RT_INSPECT_ENABLE": "0"}
    if slot.host.accelerator == "trainium2":
        env["NEURON_RT_VIRTUAL_CORE_SIZE"] = str(slot.host.lnc)
    if slot.pool.engine == "neuron-legacy":  # the fork picks its backend by it; vllm-neuron is NxDI only
        env["VLLM_NEURON_FRAMEWORK"] = "neuronx-distributed-inference"
    compiled = slot.pool.compiled_path or model.compiled_path
    if compiled:
        env["NEURON_COMPILED_ARTIFACTS"] = compiled
    return env


def _legacy_env(model: ModelSpec, slot: Slot, slots: list[Slot]) -> dict[str, str]:
    """server.sh, in its order (VISIBLE_CORES follows on a shared host)."""
    pool = slot.pool
    assert isinstance(pool, PDPool)
    env = {
        "NEURON_RT_ASYNC_SENDRECV_BOOTSTRAP_PORT": str(pool.bootstrap_port),
        "NEURON_RT_ASYNC_SENDRECV_EXPERIMENTAL_ENABLED": "1",
    }
    compiled = pool.compiled_path or model.compiled_path
    if compiled:
        env["NEURON_COMPILED_ARTIFACTS"] = compiled
    env["NEURON_SEND_IP"] = _peer(slots, pool, "prefill").host.ip
    env["NEURON_RECV_IP"] = _peer(slots, pool, "decode").host.ip
    env["NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS"] = "2"
    # server.sh relies on trn2's default LNC=2; spell it out only when it differs.
    if slot.host.accelerator == "trainium2" and slot.host.lnc != 2:
        env["NEURON_RT_VIRTUAL_CORE_SIZE"] = str(slot.host.lnc)
    return env
