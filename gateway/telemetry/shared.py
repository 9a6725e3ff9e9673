"""One /metrics for several gateway processes (gateway/processes.py).

Counters and histograms use prometheus_client's multiprocess mode: with PROMETHEUS_MULTIPROC_DIR
set before the library is imported, every process writes its values to memory-mapped files in
that directory and a scrape sums them (MultiProcessCollector). The gauges the gateway reads from
its pools at scrape time (telemetry/state.py) have no value to map: each process writes its own
as a small text file in the same directory every second and at each scrape it serves, and the
scrape merges them (sums of requests in flight and queued, the largest of the 0/1 states), so a
gauge seen through one process is at most a second old for the others.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
WRITE_INTERVAL_S = 1.0
SUMMED = {"inflight_requests", "queued_requests", "endpoint_outstanding_requests", "endpoint_outstanding_prompt_tokens"}


def shared_dir() -> str | None:
    return os.environ.get(SHARED_DIR_ENV) or None


def _state_file(directory: str, pid: int) -> Path:
    return Path(directory) / f"state_{pid}.prom"


def forget_process(directory: str, pid: int) -> None:
    """A process is gone: its gauges leave the aggregate (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)
    _state_file(directory, pid).unlink(missing_ok=True)


class SharedState(Collector):
    """This process's scrape-time gauges (`own`), shared with and merged from its siblings'."""

    def __init__(self, directory: str, own: Collector) -> None:
        self.directory = directory
        self.own = CollectorRegistry(auto_describe=False)
        self.own.register(own)

    def write(self) -> None:
        path = _state_file(self.directory, os.getpid())
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(generate_latest(self.own))
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one

    async def run(self) -> None:
        while True:
            self.write()
            await asyncio.sleep(WRITE_INTERVAL_S)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]] = {}
        for path in Path(self.directory).glob("state_*.prom"):
            try:
                text = path.read_text()
            except OSError:  # removed meanwhile: that process is gone
                continue
            for family in text_string_to_metric_families(text):
                doc, values = merged.setdefault(family.name, (family.documentation, {}))
                add = family.name.removeprefix("pd_gateway_") in SUMMED
                for sample in family.samples:
                    key = tuple(sorted(sample.labels.items()))
                    old = values.get(key)
                    values[key] = (
                        sample.value if old is None else (old + sample.value if add else max(old, sample.value))
                    )
        for name, (doc, values) in merged.items():
            labels = [k for k, _ in next(iter(values))] if values else []
            family = GaugeMetricFamily(name, doc, labels=labels)
            for key, value in values.items():
                family.add_metric([v for _, v in key], value)
            yield family

    def exposition(self) -> bytes:
        from prometheus_client import multiprocess

        self.write()
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, path=self.directory)
        registry.register(self)
        return generate_latest(registry)
