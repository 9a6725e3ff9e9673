"""Read-only views: /v1/models, /sim/stats and Prometheus /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SimConfig
from .engine import SimStats

if TYPE_CHECKING:
    from .server import SimServer


def models_body(cfg: SimConfig) -> dict[str, Any]:
    return {"object": "list", "data": [{
        "id": cfg.model, "object": "model", "created": 0, "owned_by": "vllm",
        "root": cfg.model, "parent": None, "max_model_len": cfg.max_model_len,
        "permission": [],
    }]}


def stats_body(server: SimServer) -> dict[str, Any]:
    body = server.stats.to_json()
    body["kv_held"] = len(server.kv_by_id) + len(server.kv_by_request)
    body["engine_id"] = server.config.engine_id
    body["config"] = server.config.to_json() | {"port": server.port}
    return body


def metrics_text(cfg: SimConfig, stats: SimStats) -> str:
    """The few vLLM metrics a router looks at, with vLLM's label set."""
    labels = f'model_name="{cfg.model}",engine="0"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {float(stats.in_flight)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} 0.0",
        "# HELP vllm:prompt_tokens_by_source_total Number of prompt tokens by source.",
        "# TYPE vllm:prompt_tokens_by_source_total counter",
        f'vllm:prompt_tokens_by_source_total{{{labels},source="local_compute"}} '
        f"{float(stats.local_prefill_tokens)}",
        f'vllm:prompt_tokens_by_source_total{{{labels},source="external_kv_transfer"}} '
        f"{float(stats.external_prefill_tokens)}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {float(stats.prompt_tokens_total)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {float(stats.generation_tokens_total)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{{labels},finished_reason="length"}} '
        f"{float(stats.completed)}",
    ]
    return "\n".join(lines) + "\n"
