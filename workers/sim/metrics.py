"""Prometheus /metrics with vLLM's metric names, types and labels (prometheus_client).

Each server owns a CollectorRegistry with one collector that reads the live counters at
scrape time, so nothing is global and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .config import SimConfig
    from .server import SimServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what vLLM's /metrics sends
LABELS = ["model_name", "engine"]


class SimCollector(Collector):
    def __init__(self, server: SimServer) -> None:
        self._server = server

    def _labels(self) -> list[str]:
        return [self._server.config.model, "0"]

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=LABELS)
        g.add_metric(self._labels(), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=LABELS)
        c.add_metric(self._labels(), value, created=self._server.stats.started_at)
        return c

    def collect(self) -> Iterator[Metric]:
        s, cache = self._server.stats, self._server.prefix_cache
        labels = self._labels()
        yield self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.", s.in_flight)
        yield self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", 0)
        # Blocks of running requests plus those a prefill holds for a decode to read (vLLM keeps them
        # allocated until the decode's notification, or the lease's expiry, frees them).
        in_use = s.kv_blocks_in_use + self._server.kv_held_blocks
        usage = min(1.0, in_use / cache.capacity_blocks) if cache.capacity_blocks else 0.0
        yield self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        yield cache_config_info(self._server.config)
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            cache.stats.queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", cache.stats.hits
        )
        by_source = CounterMetricFamily(
            "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", labels=[*LABELS, "source"]
        )
        for source, value in (
            ("local_compute", s.local_prefill_tokens),
            ("local_cache_hit", s.local_cache_hit_tokens),
            ("external_kv_transfer", s.external_prefill_tokens),
        ):
            by_source.add_metric([*labels, source], value, created=s.started_at)
        yield by_source
        yield self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total)
        yield self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens_total
        )
        success = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.", labels=[*LABELS, "finished_reason"]
        )
        for reason, value in s.finished.items():
            success.add_metric([*labels, reason], value, created=s.started_at)
        yield success
        config = self._server.config
        if config.role == "both" or config.kv_protocol != "nixl":
            return  # vLLM has the NIXL connector's metrics only where a P/D worker runs one
        yield self._counter(
            "vllm:nixl_num_kv_expired_reqs",
            "Number of requests that had their KV expire. NOTE: This metric is tracked on the P instance.",
            s.kv_expired,
        )


# The rest of vLLM 0.32's CacheConfig labels, as a CPU worker of the tests' tiny model writes them.
_CACHE_CONFIG = {
    "_block_size_resolved": "True",
    "cache_hit_alignment_tokens": "None",
    "effective_attention_block_size": "128",
    "enable_mamba_shared_prefix_checkpoint": "False",
    "gpu_memory_utilization": "0.92",
    "hash_block_size": "None",
    "is_attention_free": "False",
    "kv_cache_dtype_skip_layers": "[]",
    "kv_cache_layout": "None",
    "kv_cache_max_concurrency": "128.0",
    "kv_cache_memory_bytes": "67108864",
    "kv_offloading_backend": "native",
    "kv_offloading_size": "None",
    "kv_sharing_fast_prefill": "False",
    "mamba_block_size": "None",
    "mamba_cache_dtype": "auto",
    "mamba_cache_mode": "none",
    "mamba_page_size_padded": "None",
    "mamba_ssm_cache_dtype": "float32",
    "num_gpu_blocks_override": "None",
    "prefix_cache_retention_interval": "0",
    "prefix_caching_hash_algo": "sha256",
    "prefix_match_unit": "None",
    "replayssm_buffer_len": "16",
    "skip_page_size_padded": "None",
    "sliding_window": "None",
    "swa_bounded_replay": "True",
    "use_kda_recoverssm": "False",
    "use_replayssm": "False",
    "user_specified_block_size": "False",
}


def cache_config_info(config: SimConfig) -> GaugeMetricFamily:
    """vLLM's `vllm:cache_config_info`: a gauge of 1 whose labels are the engine's CacheConfig
    (no model_name); the ones a router reads follow the simulator's config:
    `num_gpu_blocks` x `block_size` is the KV cache's size in tokens."""
    blocks = config.prefix_cache_blocks
    info = {
        **_CACHE_CONFIG,
        "block_size": str(config.block_size),
        "cache_dtype": "auto",
        "enable_prefix_caching": str(config.enable_prefix_caching),
        "engine": "0",
        "kv_cache_size_tokens": str(blocks * config.block_size),
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(blocks),
    }
    g = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=list(info))
    g.add_metric(list(info.values()), 1.0)
    return g


def new_registry(server: SimServer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SimCollector(server))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
