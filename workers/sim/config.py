"""Simulated worker configuration (dataclass + CLI flags)."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .prefix_cache import DEFAULT_BLOCK_SIZE, DEFAULT_CAPACITY_BLOCKS

Role = Literal["both", "prefill", "decode"]
KVProtocol = Literal["nixl", "neuron-legacy"]


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0 = ephemeral
    model: str = "sim-model"
    ttft_ms: float = 0.0
    prefill_ms_per_token: float = 0.0
    prefill_concurrency: int = 0  # prefills computed at once (0: unlimited); 1 models a compute-bound engine
    itl_ms: float = 0.0
    max_model_len: int = 4096
    role: Role = "both"
    kv_protocol: KVProtocol = "nixl"
    kv_peers: list[str] = field(default_factory=list)
    kv_hold_s: float = 30.0
    kv_wait_s: float = 10.0
    fail_after_tokens: int | None = None
    decode_fault_status: int = 0  # answer this to a request that carries a remote prefill's KV, unread
    decode_stall_s: float = 0.0  # hang this long before reading a remote prefill's KV (a stuck engine)
    neuron_cores: str | None = None  # claimed exclusively by the CLI (cores.py)
    advertise_host: str | None = None  # the address peers reach it at (a pod IP); default from host
    enable_prefix_caching: bool = True  # on by default, as in vLLM V1
    block_size: int = DEFAULT_BLOCK_SIZE
    prefix_cache_blocks: int = DEFAULT_CAPACITY_BLOCKS
    prefix_cache_outputs: bool = False  # also cache the generated tokens' blocks (vLLM does)
    enable_prompt_tokens_details: bool = False  # vLLM's flag: usage.prompt_tokens_details
    engine_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if self.role not in ("both", "prefill", "decode"):
            raise ValueError(f"role must be both|prefill|decode, got {self.role!r}")
        if self.kv_protocol not in ("nixl", "neuron-legacy"):
            raise ValueError(f"kv_protocol must be nixl|neuron-legacy, got {self.kv_protocol!r}")
        if isinstance(self.kv_peers, str):
            self.kv_peers = _split_peers(self.kv_peers)

    @classmethod
    def from_any(cls, config: SimConfig | dict[str, Any] | None) -> SimConfig:
        if config is None:
            return cls()
        if isinstance(config, SimConfig):
            return config
        return cls(**{k.replace("-", "_"): v for k, v in config.items()})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _split_peers(value: str) -> list[str]:
    return [p.strip().rstrip("/") for p in value.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers.sim", description="Simulated vLLM OpenAI worker (PD-aware).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="sim-model", help="served model name")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    p.add_argument("--prefill-ms-per-token", type=float, default=0.0, help="extra prefill time per prompt token")
    p.add_argument(
        "--prefill-concurrency", type=int, default=0, help="prefills computed at once; later ones queue (0: unlimited)"
    )
    p.add_argument("--itl-ms", type=float, default=0.0, help="inter-token latency")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--role", choices=["both", "prefill", "decode"], default="both")
    p.add_argument("--kv-protocol", choices=["nixl", "neuron-legacy"], default="nixl")
    p.add_argument("--kv-peers", default="", help="comma list of prefill peer URLs (neuron-legacy decode)")
    p.add_argument(
        "--kv-hold-s",
        type=float,
        default=30.0,
        help="how long a prefill keeps KV waiting for pickup (vLLM's kv_lease_duration, 30 s by default)",
    )
    p.add_argument("--kv-wait-s", type=float, default=10.0, help="how long a legacy decode waits for KV")
    p.add_argument(
        "--fail-after-tokens",
        type=int,
        default=None,
        help="abort the connection after N token chunks (fault injection)",
    )
    p.add_argument(
        "--decode-fault-status",
        type=int,
        default=0,
        help="answer this HTTP status to every request carrying a remote prefill's kv_transfer_params, "
        "without reading or freeing its KV (fault injection; 0: off)",
    )
    p.add_argument(
        "--decode-stall-s",
        type=float,
        default=0.0,
        help="hang this long before reading a remote prefill's KV, freeing nothing if cancelled (fault injection)",
    )
    p.add_argument(
        "--neuron-cores",
        default=None,
        help="cores to claim exclusively, e.g. 0-15 (lock files under $PD_SIM_CORE_DIR, default /tmp/pd-sim-cores)",
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="model vLLM's automatic prefix caching (default on)",
    )
    p.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="tokens per KV block (prefix-cache granularity)"
    )
    p.add_argument(
        "--prefix-cache-blocks",
        type=int,
        default=DEFAULT_CAPACITY_BLOCKS,
        help="prefix-cache capacity in blocks (LRU beyond it)",
    )
    p.add_argument(
        "--prefix-cache-outputs",
        action="store_true",
        help="also cache the blocks of generated tokens, as vLLM does (a chat's next turn finds its last reply)",
    )
    p.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="report usage.prompt_tokens_details.cached_tokens (as vLLM's flag)",
    )
    p.add_argument("--engine-id", default=None, help="KV engine id (default: random uuid)")
    p.add_argument(
        "--advertise-host",
        default=None,
        help="address the decode worker reaches this "
        "prefill worker at (in Kubernetes: the pod IP); default: --host, or 127.0.0.1 for 0.0.0.0",
    )
    return p


def config_from_args(argv: Sequence[str] | None = None) -> SimConfig:
    ns = build_parser().parse_args(argv)
    values = vars(ns)
    values["kv_peers"] = _split_peers(values["kv_peers"])
    if values["engine_id"] is None:
        del values["engine_id"]
    return SimConfig(**values)
