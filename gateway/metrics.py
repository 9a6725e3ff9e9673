"""Prometheus text exposition of the gateway's own counters and endpoint gauges."""

from __future__ import annotations

from collections import defaultdict

from .limits import Admission
from .pool import Pool


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += value

    def render(self, pools: list[Pool], admission: Admission) -> str:
        lines = [f"pd_gateway_inflight_requests {admission.inflight}"]
        for (name, labels), value in sorted(self.counters.items()):
            lines.append(f"{name}{_labels(labels)} {value:g}")
        for pool in pools:
            # Routable or not, per pool: /ready answers for the whole gateway, this says which pool.
            lines.append(f"pd_gateway_pool_ready{_labels((('pool', pool.name),))} {int(pool.ready)}")
            for ep in pool.endpoints:
                lab = _labels((("endpoint", ep.url), ("pool", pool.name), ("role", ep.role)))
                lines.append(f"pd_gateway_endpoint_healthy{lab} {int(ep.healthy)}")
                lines.append(f"pd_gateway_endpoint_outstanding_requests{lab} {ep.outstanding}")
                lines.append(f"pd_gateway_endpoint_outstanding_prompt_tokens{lab} {ep.outstanding_tokens}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
