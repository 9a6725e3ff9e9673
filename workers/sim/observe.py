"""Read-only views: /v1/models, /sim/stats and Prometheus /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SimConfig

if TYPE_CHECKING:
    from .server import SimServer


def models_body(cfg: SimConfig) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": cfg.model,
                "object": "model",
                "created": 0,
                "owned_by": "vllm",
                "root": cfg.model,
                "parent": None,
                "max_model_len": cfg.max_model_len,
                "permission": [],
            }
        ],
    }


def stats_body(server: SimServer) -> dict[str, Any]:
    body = server.stats.to_json()
    cache = server.prefix_cache
    body["prefix_cache"] = {
        "blocks": len(cache),
        "capacity_blocks": cache.capacity_blocks,
        "block_size": cache.block_size,
        **vars(cache.stats),
    }
    body["kv_held"] = len(server.kv_by_id) + len(server.kv_by_request)
    body["engine_id"] = server.config.engine_id
    body["config"] = server.config.to_json() | {"port": server.port}
    return body
