"""deploy/grafana/pd-gateway.json: every PromQL expression parses, and every metric it names is
one that a running gateway exports (scraped after DP and PD traffic)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "pd-gateway.json"
# Grafana's variables, replaced by something PromQL accepts before parsing.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
}


def _queries(dashboard: dict) -> list[str]:
    """Every panel target's expr, and the selector inside each templating label_values()."""
    out: list[str] = []

    def panels(items: list[dict]) -> None:
        for p in items:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            panels(p.get("panels", []))

    panels(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else None
        if text and var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
            assert match, f"templating query is not label_values(selector, label): {text}"
            out.append(match.group(1))
    return out


def _promql(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # $pool, ${model}: regex matchers' values


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(_promql(expr)), visit)
    return names


def exported(exposition: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(s.name for s in family.samples)
    return names


def test_every_expression_parses_and_names_a_metric():
    queries = _queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 20
    for q in queries:
        assert metric_names(q), f"no metric in {q}"


async def test_every_metric_the_dashboard_uses_is_exported(sim, gateway, client):
    replica = await sim()
    p = await sim(model="sim-pd-model", role="prefill", kv_protocol="nixl")
    d = await sim(model="sim-pd-model", role="decode", kv_protocol="nixl")
    gw = await gateway(
        [
            {"name": "dp", "workers": [replica.url]},
            {
                "name": "pd",
                "kind": "pd",
                "disaggregate_min_tokens": 0,
                "protocol": "nixl",
                "prefill": [p.url],
                "decode": [d.url],
            },
        ]
    )
    for model in ("sim-model", "sim-pd-model"):
        body = {
            "model": model,
            "prompt": "hi",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        assert (await client.post(f"{gw.url}/v1/completions", json=body)).status_code == 200
    await wait_until(lambda: sum(gw.gateway.telemetry.outcomes.values()) >= 2)
    available = exported((await client.get(f"{gw.url}/metrics")).text)
    used = set().union(*(metric_names(q) for q in _queries(json.loads(DASHBOARD.read_text()))))
    assert used - available == set()
    # and the dashboard covers the families an operator alerts on
    for family in (
        "pd_gateway_ttft_seconds_bucket",
        "pd_gateway_pd_handoff_seconds_bucket",
        "pd_gateway_upstream_failures_total",
        "pd_gateway_endpoint_healthy",
    ):
        assert family in used
