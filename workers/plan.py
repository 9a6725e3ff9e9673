"""Turn a Topology into worker launch specs and a gateway config. Pure: no I/O.

The commands and environments reproduce the AWS Neuron tutorials this project
is built from (data parallelism: deploy_vllm_endpoint.sh; disaggregated
inference: server.sh). tests/test_plan.py holds those as golden cases.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from workers.topology import (
    DEFAULT_ENTRYPOINT,
    SIM_ENTRYPOINT,
    HostSpec,
    ModelSpec,
    PDPool,
    ReplicasPool,
    RoleSpec,
    Topology,
    TopologyError,
    format_cores,
    parse_cores,
)

Pool = ReplicasPool | PDPool


class PlanError(ValueError):
    """The topology cannot be realised; the message says what to change."""


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


@dataclass(frozen=True)
class PoolRoute:
    name: str
    kind: str
    model: str
    protocol: str | None = None


@dataclass
class Plan:
    workers: list[WorkerSpec]
    pools: list[PoolRoute]
    listen_host: str
    listen_port: int

    def worker(self, name: str) -> WorkerSpec:
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(name)

    def urls(self, pool: str, role: str) -> list[str]:
        return [w.url for w in self.workers if w.pool == pool and w.role == role]

    def gateway_config(self) -> dict[str, Any]:
        """The gateway's YAML config (gateway/config.py) routing to these workers."""
        pools: list[dict[str, Any]] = []
        for p in self.pools:
            entry: dict[str, Any] = {"name": p.name, "kind": p.kind, "models": [p.model]}
            if p.kind == "pd":
                entry["protocol"] = p.protocol
                entry["prefill"] = self.urls(p.name, "prefill")
                entry["decode"] = self.urls(p.name, "decode")
            else:
                entry["workers"] = self.urls(p.name, "replica")
            pools.append(entry)
        return {"listen": {"host": self.listen_host, "port": self.listen_port}, "pools": pools}

    def to_dict(self) -> dict[str, Any]:
        return {"gateway": self.gateway_config(), "workers": [asdict(w) for w in self.workers]}


@dataclass
class _Slot:
    """One worker before cores and command line are known."""

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
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.pool.name}-{self.role}-{self.index}"

    @property
    def field(self) -> str:
        where = f"pools[{self.pool_index}]"
        return f"{where}.{self.role}" if self.role_spec is not None else where


def plan(topology: Topology, env: Mapping[str, str] | None = None) -> Plan:
    env = env or {}
    hosts = {h.name: h for h in topology.all_hosts}
    models = {m.name: m for m in topology.models}
    slots: list[_Slot] = []
    for i, pool in enumerate(topology.pools):
        if pool.model not in models:
            raise PlanError(
                f"pools[{i}] ({pool.name}): unknown model {pool.model!r}; "
                f"add it under 'models' or use one of {sorted(models)}"
            )
        slots += _pool_slots(pool, i, hosts, topology.all_hosts[0])
    for host in topology.all_hosts:
        _allocate_cores(host, [s for s in slots if s.host is host], env)
    _assign_side_channels(slots)
    gateway_host = _gateway_host(topology, hosts)
    _check_ports(topology, slots, gateway_host)
    workers = [_worker(topology, models[s.pool.model], s, slots) for s in slots]
    routes = [
        PoolRoute(p.name, p.kind, p.model, p.connector if isinstance(p, PDPool) else None)
        for p in topology.pools
    ]
    return Plan(workers, routes, topology.gateway.host, topology.gateway.port)


# --- placement -----------------------------------------------------------------


def _pool_slots(
    pool: Pool, index: int, hosts: Mapping[str, HostSpec], default_host: HostSpec
) -> list[_Slot]:
    if isinstance(pool, ReplicasPool):
        return _role_slots(pool, index, "replica", None, hosts, default_host)
    for role in ("prefill", "decode"):
        if getattr(pool, role).count < 1:
            raise PlanError(
                f"pools[{index}] ({pool.name}): a pd pool needs at least one {role} worker; "
                f"set {role}.count to 1 or more (or use kind: replicas)"
            )
    if pool.connector == "neuron-legacy" and (pool.prefill.count, pool.decode.count) != (1, 1):
        raise PlanError(
            f"pools[{index}] ({pool.name}): connector neuron-legacy (NeuronConnector) "
            "supports exactly 1 prefill and 1 decode worker; set both counts to 1, "
            "split into several pd pools, or use connector: nixl"
        )
    return _role_slots(pool, index, "prefill", pool.prefill, hosts, default_host) + _role_slots(
        pool, index, "decode", pool.decode, hosts, default_host
    )


def _role_slots(
    pool: Pool,
    index: int,
    role: str,
    spec: RoleSpec | None,
    hosts: Mapping[str, HostSpec],
    default_host: HostSpec,
) -> list[_Slot]:
    where = f"pools[{index}]" + (f".{role}" if spec else "")
    count = spec.count if spec else pool.replicas  # type: ignore[union-attr]
    base_port = spec.base_port if spec else pool.base_port  # type: ignore[union-attr]
    tp = (spec.tp if spec and spec.tp else None) or pool.tp
    host_names = (spec.hosts if spec else None) or pool.hosts or [default_host.name]
    cores = (spec.cores if spec else pool.cores) or None
    for name in host_names:
        if name not in hosts:
            raise PlanError(f"{where}.hosts: unknown host {name!r}; known hosts: {sorted(hosts)}")
    if cores is not None and len(cores) != count:
        raise PlanError(
            f"{where}.cores: {len(cores)} core range(s) for {count} worker(s); give one per worker"
        )
    return [
        _Slot(
            pool=pool,
            pool_index=index,
            role=role,
            index=i,
            host=hosts[host_names[i % len(host_names)]],
            tp=tp,
            port=base_port + i,
            explicit_cores=cores[i] if cores else None,
            role_spec=spec,
        )
        for i in range(count)
    ]


# --- cores ---------------------------------------------------------------------


def _visible_var(host: HostSpec) -> str:
    return "NEURON_RT_VISIBLE_CORES" if host.is_neuron else "CUDA_VISIBLE_DEVICES"


def _available_cores(host: HostSpec, env: Mapping[str, str]) -> tuple[list[int], bool]:
    """Cores the planner may hand out on `host`, and whether they came from the env."""
    assert host.cores is not None
    var = _visible_var(host)
    inherited = env.get(var, "").strip()
    if not inherited:
        return list(range(host.cores)), False
    try:
        cores = parse_cores(inherited)
    except TopologyError as err:
        raise PlanError(f"{var}={inherited!r} from the environment: {err}") from None
    outside = [c for c in cores if c >= host.cores]
    if outside:
        raise PlanError(
            f"{var}={inherited} from the environment names cores beyond host {host.name!r}'s "
            f"{host.cores}; raise hosts.cores or fix {var}"
        )
    return cores, True


def _allocate_cores(host: HostSpec, slots: list[_Slot], env: Mapping[str, str]) -> None:
    if not slots or not host.tracks_cores:
        return
    available, inherited = _available_cores(host, env)
    _check_tp(host, slots, available, inherited)
    taken: dict[int, _Slot] = {}
    for s in slots:
        if s.explicit_cores is not None:
            s.cores = _reserve_explicit(host, s, set(available), taken)
    for s in slots:
        if s.cores is None:
            s.cores = _first_fit(host, s, available, taken)
    sole_full = len(slots) == 1 and slots[0].tp == len(available)
    if sole_full and not inherited and slots[0].explicit_cores is None:
        slots[0].cores = None  # owns the whole host: no pinning, as in the multi-instance seed


def _check_tp(host: HostSpec, slots: list[_Slot], available: list[int], inherited: bool) -> None:
    n = len(available)
    unit = "logical NeuronCores" if host.is_neuron else "GPUs"
    source = " (from the environment)" if inherited else ""
    for s in slots:
        if s.tp > n:
            raise PlanError(
                f"{s.field}: tp {s.tp} needs more {unit} than host {host.name!r} has "
                f"({n}{source}, lnc={host.lnc}); lower tp to at most {n} or use a bigger host"
            )
        if n % s.tp:
            divisors = [d for d in range(1, n + 1) if n % d == 0]
            raise PlanError(
                f"{s.field}: tp {s.tp} does not divide the {n} {unit} of host {host.name!r}"
                f"{source}; use one of {divisors}"
            )
    need = sum(s.tp for s in slots)
    if need > n:
        parts = ", ".join(f"{s.name} tp={s.tp}" for s in slots)
        raise PlanError(
            f"host {host.name!r} has {n} {unit}{source} but its workers need {need} ({parts}); "
            "lower replicas/count or tp, or place workers on another host"
        )


def _reserve_explicit(
    host: HostSpec, slot: _Slot, available: set[int], taken: dict[int, _Slot]
) -> list[int]:
    assert slot.explicit_cores is not None
    where = f"{slot.field}.cores[{slot.index}]"
    try:
        cores = parse_cores(slot.explicit_cores)
    except TopologyError as err:
        raise PlanError(f"{where}: {err}") from None
    if len(cores) != slot.tp:
        raise PlanError(f"{where}: {slot.explicit_cores} has {len(cores)} cores but tp is {slot.tp}")
    missing = [c for c in cores if c not in available]
    if missing:
        raise PlanError(
            f"{where}: cores {format_cores(missing)} are not available on host {host.name!r} "
            f"(available: {format_cores(sorted(available))})"
        )
    clash = sorted({taken[c].name for c in cores if c in taken})
    if clash:
        raise PlanError(
            f"{where}: core range {slot.explicit_cores} of {slot.name} overlaps cores of "
            f"{', '.join(clash)} on host {host.name!r}; give each worker a disjoint range"
        )
    for c in cores:
        taken[c] = slot
    return cores


def _first_fit(
    host: HostSpec, slot: _Slot, available: list[int], taken: dict[int, _Slot]
) -> list[int]:
    for start in range(len(available) - slot.tp + 1):
        block = available[start : start + slot.tp]
        contiguous = block[-1] - block[0] == slot.tp - 1
        if contiguous and not any(c in taken for c in block):
            for c in block:
                taken[c] = slot
            return block
    free = [c for c in available if c not in taken]
    raise PlanError(
        f"{slot.field}: no contiguous block of {slot.tp} free cores left on host {host.name!r} "
        f"for {slot.name} (free: {format_cores(free) or 'none'}); adjust the explicit 'cores'"
    )


# --- ports ---------------------------------------------------------------------


def _assign_side_channels(slots: list[_Slot]) -> None:
    per_pool: dict[str, int] = {}
    for s in slots:
        if isinstance(s.pool, PDPool) and s.pool.connector == "nixl":
            n = per_pool.get(s.pool.name, 0)
            s.side_channel_port = s.pool.side_channel_base_port + n
            per_pool[s.pool.name] = n + 1


def _gateway_host(topology: Topology, hosts: Mapping[str, HostSpec]) -> HostSpec:
    name = topology.gateway.on or topology.all_hosts[0].name
    if name not in hosts:
        raise PlanError(f"gateway.on: unknown host {name!r}; known hosts: {sorted(hosts)}")
    return hosts[name]


def _check_ports(topology: Topology, slots: list[_Slot], gateway_host: HostSpec) -> None:
    owners: dict[tuple[str, int], str] = {}

    def claim(host: HostSpec, port: int, owner: str) -> None:
        key = (host.name, port)
        if key in owners and owners[key] != owner:
            raise PlanError(
                f"port {port} on host {host.name!r} is used by both {owners[key]} and {owner}; "
                "change one of them"
            )
        owners[key] = owner

    claim(gateway_host, topology.gateway.port, "the gateway (gateway.port)")
    for s in slots:
        claim(s.host, s.port, f"worker {s.name} ({s.field}.base_port)")
        if s.side_channel_port is not None:
            claim(
                s.host,
                s.side_channel_port,
                f"NIXL side channel of {s.name} (pools[{s.pool_index}].side_channel_base_port)",
            )
        if isinstance(s.pool, PDPool) and s.pool.connector == "neuron-legacy":
            # P and D of one pool share the runtime's KV bootstrap port, so only
            # another pool on the same host can collide with it.
            claim(
                s.host,
                s.pool.bootstrap_port,
                f"KV bootstrap of pool {s.pool.name} (pools[{s.pool_index}].bootstrap_port)",
            )


# --- command line and environment ----------------------------------------------


def _worker(topology: Topology, model: ModelSpec, slot: _Slot, slots: list[_Slot]) -> WorkerSpec:
    cores = format_cores(slot.cores) if slot.cores is not None else None
    kv = _kv_transfer_config(slot, slots)
    env = _base_env(model, slot, slots, cores)
    for layer in (topology.env, slot.pool.env, slot.role_spec.env if slot.role_spec else {}):
        if _visible_var(slot.host) in layer and slot.host.tracks_cores:
            raise PlanError(
                f"{slot.field}.env: do not set {_visible_var(slot.host)} by hand; "
                "use 'cores' (or export it before planning to restrict the planner)"
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
        argv=_argv(topology, model, slot, kv),
        env=env,
        url=f"http://{slot.host.ip}:{slot.port}",
    )


def _argv(topology: Topology, model: ModelSpec, slot: _Slot, kv: str | None) -> list[str]:
    pool, host = slot.pool, slot.host
    entry = pool.entrypoint or (SIM_ENTRYPOINT if host.accelerator == "sim" else DEFAULT_ENTRYPOINT)
    argv = [topology.python, "-m", entry, "--model", model.path]
    if model.name != model.path:
        argv += ["--served-model-name", model.name]
    argv += ["--max-num-seqs", str(pool.batch_size), "--max-model-len", str(pool.max_model_len)]
    argv += ["--tensor-parallel-size", str(slot.tp)]
    if host.is_neuron:
        argv += ["--device", "neuron", "--use-v2-block-manager"]
        argv += ["--override-neuron-config", _neuron_override(pool)]
    elif pool.override_neuron_config is not None:
        raise PlanError(
            f"{slot.field}.override_neuron_config: only applies to trainium hosts, "
            f"but {slot.name} runs on {host.accelerator} host {host.name!r}; remove it"
        )
    elif host.accelerator == "cpu":
        argv += ["--enforce-eager"]
    if kv is not None:
        argv += ["--kv-transfer-config", kv]
    argv += pool.extra_args + (slot.role_spec.extra_args if slot.role_spec else [])
    return argv + ["--port", str(slot.port)]


def _neuron_override(pool: Pool) -> str:
    value = pool.override_neuron_config
    if value is None:
        return "{}"
    return value if isinstance(value, str) else json.dumps(value)


def _kv_transfer_config(slot: _Slot, slots: list[_Slot]) -> str | None:
    pool = slot.pool
    if not isinstance(pool, PDPool):
        return None
    producer = slot.role == "prefill"
    if pool.connector == "nixl":
        role = "kv_both" if pool.kv_roles == "both" else ("kv_producer" if producer else "kv_consumer")
        device = "cuda" if slot.host.accelerator == "gpu" else "cpu"
        return json.dumps({"kv_connector": "NixlConnector", "kv_role": role, "kv_buffer_device": device})
    if not slot.host.is_neuron:
        raise PlanError(
            f"pools[{slot.pool_index}] ({pool.name}): connector neuron-legacy needs trainium "
            f"hosts, but {slot.name} is on {slot.host.accelerator}; use connector: nixl"
        )
    prefill = _peer(slots, pool, "prefill")
    config = {
        "kv_connector": "NeuronConnector",
        "kv_buffer_device": "cpu",
        "kv_role": "kv_producer" if producer else "kv_consumer",
        "kv_rank": 0 if producer else 1,
        "kv_parallel_size": 2,
        "kv_buffer_size": pool.kv_buffer_size,
        "kv_ip": prefill.host.ip,
        # The seed's server.sh quotes the decode offset into a JSON string
        # ("neuron_core_offset": "32"); the field is a core index, so emit an int.
        "neuron_core_offset": slot.cores[0] if slot.cores else 0,
    }
    return json.dumps(config)


def _peer(slots: list[_Slot], pool: PDPool, role: str) -> _Slot:
    return next(s for s in slots if s.pool is pool and s.role == role)


def _base_env(
    model: ModelSpec, slot: _Slot, slots: list[_Slot], cores: str | None
) -> dict[str, str]:
    host, pool = slot.host, slot.pool
    legacy = isinstance(pool, PDPool) and pool.connector == "neuron-legacy"
    if legacy:
        env = _legacy_env(model, slot, slots)
    elif host.is_neuron:
        env = _neuron_env(model, host)
    else:
        env = {}
    if slot.cores is not None and cores is not None:
        env[_visible_var(host)] = cores if host.is_neuron else ",".join(map(str, slot.cores))
    if host.is_neuron and not legacy:
        env["VLLM_RPC_TIMEOUT"] = "100000"
    if slot.side_channel_port is not None:
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = host.ip
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(slot.side_channel_port)
    return env


def _neuron_env(model: ModelSpec, host: HostSpec) -> dict[str, str]:
    """deploy_vllm_endpoint.sh (data-parallel tutorial), in its order."""
    env = {"NEURON_RT_INSPECT_ENABLE": "0"}
    if host.accelerator == "trainium2":
        env["NEURON_RT_VIRTUAL_CORE_SIZE"] = str(host.lnc)
    env["VLLM_NEURON_FRAMEWORK"] = "neuronx-distributed-inference"
    if model.compiled_path:
        env["NEURON_COMPILED_ARTIFACTS"] = model.compiled_path
    return env


def _legacy_env(model: ModelSpec, slot: _Slot, slots: list[_Slot]) -> dict[str, str]:
    """server.sh (disaggregated-inference tutorial), in its order."""
    pool = slot.pool
    assert isinstance(pool, PDPool)
    env = {
        "NEURON_RT_ASYNC_SENDRECV_BOOTSTRAP_PORT": str(pool.bootstrap_port),
        "NEURON_RT_ASYNC_SENDRECV_EXPERIMENTAL_ENABLED": "1",
    }
    if model.compiled_path:
        env["NEURON_COMPILED_ARTIFACTS"] = model.compiled_path
    env["NEURON_SEND_IP"] = _peer(slots, pool, "prefill").host.ip
    env["NEURON_RECV_IP"] = _peer(slots, pool, "decode").host.ip
    env["NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS"] = "2"
    # server.sh relies on the trn2 default of LNC=2; say so only when it differs.
    if slot.host.accelerator == "trainium2" and slot.host.lnc != 2:
        env["NEURON_RT_VIRTUAL_CORE_SIZE"] = str(slot.host.lnc)
    return env
