"""Topology file: which hosts exist, which models, and which worker pools run on them.

The schema is documented in deploy/README.md. Loading only checks the shape of
the file (types, ranges, unique names); whether the pools fit on the hosts is
the planner's job (workers/plan/planner.py), which raises PlanError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Accelerator = Literal["trainium2", "trainium1", "gpu", "cpu", "sim"]
# Which vLLM runs on Neuron hosts: the AWS Neuron fork of vLLM 0.7.2 (`--device neuron`,
# `--override-neuron-config`, NeuronConnector), or upstream vLLM with the vllm-neuron plugin
# (no --device; Neuron settings in `--additional-config`; NixlConnector over EFA).
Engine = Literal["neuron-legacy", "vllm-neuron"]
NEURON_ACCELERATORS = ("trainium2", "trainium1")
# Logical cores per host when `cores` is omitted: trn2.48xlarge has 128 physical
# NeuronCores (64 logical at LNC=2), trn1.32xlarge has 32.
_PHYSICAL_CORES = {"trainium2": 128, "trainium1": 32}
DEFAULT_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
SIM_ENTRYPOINT = "workers.sim"


class TopologyError(ValueError):
    """The topology file is malformed; the message names each offending field."""


class PlanError(ValueError):
    """A well-formed topology that cannot be realised; the message says what to change."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostSpec(_Strict):
    name: str = "local"
    accelerator: Accelerator = "trainium2"
    # Schedulable units: logical NeuronCores (Neuron) or GPUs; ignored for cpu. A sim
    # host with `cores` is allocated like trainium and passes --neuron-cores.
    cores: int | None = Field(None, ge=1)
    lnc: int | None = Field(None, ge=1, le=2)
    ip: str = "127.0.0.1"

    @model_validator(mode="after")
    def _defaults(self) -> HostSpec:
        if self.lnc is None:
            self.lnc = 2 if self.accelerator == "trainium2" else 1
        if self.accelerator != "trainium2" and self.lnc != 1:
            raise ValueError(f"lnc: only trainium2 supports lnc=2, {self.accelerator} needs lnc=1")
        if self.cores is None and self.accelerator in _PHYSICAL_CORES:
            self.cores = _PHYSICAL_CORES[self.accelerator] // self.lnc
        if self.cores is None and self.accelerator == "gpu":
            raise ValueError("cores: a gpu host needs 'cores' (the number of GPUs)")
        return self

    @property
    def is_neuron(self) -> bool:
        return self.accelerator in NEURON_ACCELERATORS

    @property
    def tracks_cores(self) -> bool:
        if self.accelerator == "sim":
            return self.cores is not None
        return self.is_neuron or self.accelerator == "gpu"


class ModelSpec(_Strict):
    # The name clients send; when it differs from `path`, workers get --served-model-name.
    name: str
    path: str
    compiled_path: str | None = None


class GatewaySpec(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    # Name of the host the gateway runs on (for port-collision checks); default: first host.
    # (Not `on`: YAML 1.1 reads a bare `on` key as the boolean true.)
    runs_on: str | None = None


# JSON for --override-neuron-config: a mapping (serialised) or a literal string.
NeuronOverride = dict[str, Any] | str


class _WorkerKnobs(_Strict):
    """Settings shared by a pool and (as overrides) by a PD role."""

    hosts: list[str] | None = None
    cores: list[str] | None = None
    extra_args: list[str] = []
    env: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _host_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "host" in data:
            data = dict(data)
            if "hosts" in data:
                raise ValueError("give either 'host' or 'hosts', not both")
            data["hosts"] = [data.pop("host")]
        return data


class _PoolBase(_WorkerKnobs):
    name: str
    model: str
    tp: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1)
    max_model_len: int = Field(8192, ge=1)
    override_neuron_config: NeuronOverride | None = None
    # Overrides the model's compiled_path (e.g. a DI build for pd, a plain one for replicas).
    compiled_path: str | None = None
    entrypoint: str | None = None
    engine: Engine = "neuron-legacy"


class ReplicasPool(_PoolBase):
    kind: Literal["replicas"]
    replicas: int = Field(1, ge=1)
    base_port: int = Field(8000, ge=1, le=65535)


class RoleSpec(_WorkerKnobs):
    count: int = Field(1, ge=0)
    tp: int | None = Field(None, ge=1)
    base_port: int = Field(..., ge=1, le=65535)


class PDPool(_PoolBase):
    kind: Literal["pd"]
    connector: Literal["neuron-legacy", "nixl"]
    prefill: RoleSpec
    decode: RoleSpec
    # neuron-legacy (NeuronConnector) knobs, defaults from the DI tutorial's server.sh.
    kv_buffer_size: float = Field(2e11, gt=0)
    bootstrap_port: int = Field(45645, ge=1, le=65535)
    # nixl knobs: worker i of the pool gets VLLM_NIXL_SIDE_CHANNEL_PORT = base + i.
    side_channel_base_port: int = Field(5600, ge=1, le=65535)
    # "split": prefill kv_producer / decode kv_consumer; "both": kv_both everywhere.
    kv_roles: Literal["split", "both"] = "split"

    @model_validator(mode="after")
    def _cores_per_role(self) -> PDPool:
        if self.cores is not None:
            raise ValueError("cores: set cores on 'prefill' and 'decode', not on the pd pool")
        if self.connector == "neuron-legacy" and self.engine == "vllm-neuron":
            raise ValueError(
                "connector: neuron-legacy (NeuronConnector) exists only in the neuron-legacy engine; "
                "use connector: nixl with engine: vllm-neuron"
            )
        return self


Pool = Annotated[ReplicasPool | PDPool, Field(discriminator="kind")]


class Topology(_Strict):
    host: HostSpec | None = None
    hosts: list[HostSpec] | None = None
    gateway: GatewaySpec = GatewaySpec()
    python: str = "python3"
    env: dict[str, str] = {}
    models: list[ModelSpec] = Field(min_length=1)
    pools: list[Pool] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_host_form(self) -> Topology:
        if (self.host is None) == (self.hosts is None):
            raise ValueError("give exactly one of 'host' (single host) or 'hosts' (a list)")
        if self.hosts is not None and not self.hosts:
            raise ValueError("hosts: the list needs at least one host")
        for field, names in (
            ("hosts", [h.name for h in self.all_hosts]),
            ("models", [m.name for m in self.models]),
            ("pools", [p.name for p in self.pools]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{field}: names must be unique; repeated: {dup}")
        return self

    @property
    def all_hosts(self) -> list[HostSpec]:
        return [self.host] if self.host is not None else list(self.hosts or [])


_POOL_TAGS = {"replicas", "pd"}


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _POOL_TAGS and i > 0 and isinstance(loc[i - 1], int):
            continue  # discriminator tag pydantic inserts after pools[i]
        elif not item.startswith(("function-", "union[")):
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def describe_errors(err: ValidationError) -> str:
    lines = [f"{_field_path(e['loc'])}: {e['msg']}" for e in err.errors()]
    return "invalid topology:\n  " + "\n  ".join(lines)


def parse_topology(data: Any) -> Topology:
    if not isinstance(data, dict):
        raise TopologyError("invalid topology: the top level must be a mapping")
    try:
        return Topology.model_validate(data)
    except ValidationError as err:
        raise TopologyError(describe_errors(err)) from None


def load_topology(path: str | Path) -> Topology:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise TopologyError(f"cannot read topology {path}: {err}") from None
    return parse_topology(data)
