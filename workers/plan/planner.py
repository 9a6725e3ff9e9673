"""Turn a Topology into worker launch specs and a gateway config. Pure: no I/O.

The commands and environments reproduce the AWS Neuron tutorials this project
is built from (data parallelism: deploy_vllm_endpoint.sh; disaggregated
inference: server.sh). tests/test_plan.py holds those as golden cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from workers.plan.cores import CoreRequest, allocate
from workers.plan.launch import Slot, WorkerSpec, build_worker
from workers.topology import HostSpec, PDPool, PlanError, ReplicasPool, RoleSpec, Topology

__all__ = ["Plan", "PlanError", "PoolRoute", "WorkerSpec", "plan"]

Pool = ReplicasPool | PDPool


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


def plan(topology: Topology, env: Mapping[str, str] | None = None) -> Plan:
    env = env or {}
    hosts = {h.name: h for h in topology.all_hosts}
    models = {m.name: m for m in topology.models}
    slots: list[Slot] = []
    for i, pool in enumerate(topology.pools):
        if pool.model not in models:
            raise PlanError(
                f"pools[{i}] ({pool.name}): unknown model {pool.model!r}; "
                f"add it under 'models' or use one of {sorted(models)}"
            )
        _check_model_unshared(topology, i)
        slots += _pool_slots(pool, i, hosts, topology.all_hosts[0])
    for host in topology.all_hosts:
        _allocate_cores(host, [s for s in slots if s.host is host], env)
    _assign_side_channels(slots)
    gateway_host = _gateway_host(topology, hosts)
    _check_ports(topology, slots, gateway_host)
    workers = [build_worker(topology.python, topology.env, models[s.pool.model], s, slots) for s in slots]
    routes = [
        PoolRoute(p.name, p.kind, p.model, p.connector if isinstance(p, PDPool) else None) for p in topology.pools
    ]
    return Plan(workers, routes, topology.gateway.host, topology.gateway.port)


def _check_model_unshared(topology: Topology, index: int) -> None:
    pool = topology.pools[index]
    first = next(p for p in topology.pools if p.model == pool.model)
    if first is not pool:
        raise PlanError(
            f"pools[{index}] ({pool.name}): model {pool.model!r} is already served by pool "
            f"{first.name!r}, and the gateway routes a model to the first pool serving it, so "
            f"{pool.name!r} would get no traffic; add a separate models entry (same path, "
            "another name) for it"
        )


# --- placement -----------------------------------------------------------------


def _pool_slots(pool: Pool, index: int, hosts: Mapping[str, HostSpec], default_host: HostSpec) -> list[Slot]:
    if isinstance(pool, ReplicasPool):
        return _role_slots(pool, index, "replica", None, (pool.replicas, pool.base_port), hosts, default_host)
    for role in ("prefill", "decode"):
        if getattr(pool, role).count < 1:
            raise PlanError(
                f"pools[{index}] ({pool.name}): a pd pool needs at least one {role} worker; "
                f"set {role}.count to 1 or more (or use kind: replicas)"
            )
    if pool.connector == "neuron-legacy" and (pool.prefill.count, pool.decode.count) != (1, 1):
        raise PlanError(
            f"pools[{index}] ({pool.name}): connector neuron-legacy (NeuronConnector) "
            "supports exactly 1 prefill and 1 decode worker; set both counts to 1 "
            "or use connector: nixl"
        )
    return [
        slot
        for role, spec in (("prefill", pool.prefill), ("decode", pool.decode))
        for slot in _role_slots(pool, index, role, spec, (spec.count, spec.base_port), hosts, default_host)
    ]


def _role_slots(
    pool: Pool,
    index: int,
    role: str,
    spec: RoleSpec | None,
    count_and_port: tuple[int, int],
    hosts: Mapping[str, HostSpec],
    default_host: HostSpec,
) -> list[Slot]:
    count, base_port = count_and_port
    where = f"pools[{index}]" + (f".{role}" if spec else "")
    tp = (spec.tp if spec and spec.tp else None) or pool.tp
    role_hosts = spec.hosts if spec else None
    host_names = role_hosts or pool.hosts or [default_host.name]
    cores = (spec.cores if spec else pool.cores) or None
    for name in host_names:
        if name not in hosts:
            field = f"{where}.hosts" if role_hosts else f"pools[{index}].hosts"
            raise PlanError(f"{field}: unknown host {name!r}; known hosts: {sorted(hosts)}")
    if cores is not None and len(cores) != count:
        raise PlanError(f"{where}.cores: {len(cores)} core range(s) for {count} worker(s); give one per worker")
    placed = [hosts[host_names[i % len(host_names)]] for i in range(count)]
    # Ports count up per host: one host gets 8000, 8001; one worker per host keeps 8000.
    return [
        Slot(
            pool=pool,
            pool_index=index,
            role=role,
            index=i,
            host=host,
            tp=tp,
            port=base_port + placed[:i].count(host),
            explicit_cores=cores[i] if cores else None,
            role_spec=spec,
        )
        for i, host in enumerate(placed)
    ]


def _allocate_cores(host: HostSpec, slots: list[Slot], env: Mapping[str, str]) -> None:
    if not host.tracks_cores:
        pinned = next((s for s in slots if s.explicit_cores is not None), None)
        if pinned is not None:
            raise PlanError(
                f"{pinned.field}.cores: host {host.name!r} ({host.accelerator}) has no cores to pin; "
                "remove 'cores' or give the host a 'cores' count (sim) / use a trainium or gpu host"
            )
        return
    requests = [CoreRequest(s.name, s.field, s.tp, s.explicit_cores) for s in slots]
    for slot, block in zip(slots, allocate(host, requests, env), strict=True):
        slot.cores = block


# --- ports ---------------------------------------------------------------------


def _assign_side_channels(slots: list[Slot]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for s in slots:
        if isinstance(s.pool, PDPool) and s.pool.connector == "nixl" and s.host.accelerator != "sim":
            n = seen.get((s.pool.name, s.host.name), 0)
            s.side_channel_port = s.pool.side_channel_base_port + n
            seen[(s.pool.name, s.host.name)] = n + 1


def _gateway_host(topology: Topology, hosts: Mapping[str, HostSpec]) -> HostSpec:
    name = topology.gateway.runs_on or topology.all_hosts[0].name
    if name not in hosts:
        raise PlanError(f"gateway.runs_on: unknown host {name!r}; known hosts: {sorted(hosts)}")
    return hosts[name]


def _check_ports(topology: Topology, slots: list[Slot], gateway_host: HostSpec) -> None:
    owners: dict[tuple[str, int], str] = {}

    def claim(host: HostSpec, port: int, owner: str) -> None:
        key = (host.name, port)
        if key in owners and owners[key] != owner:
            raise PlanError(
                f"port {port} on host {host.name!r} is used by both {owners[key]} and {owner}; change one of them"
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
        if s.legacy and s.host.is_neuron and isinstance(s.pool, PDPool):
            # P and D of one pool share the runtime's KV bootstrap port, so only
            # another pool on the same host can collide with it.
            claim(
                s.host,
                s.pool.bootstrap_port,
                f"KV bootstrap of pool {s.pool.name} (pools[{s.pool_index}].bootstrap_port)",
            )
