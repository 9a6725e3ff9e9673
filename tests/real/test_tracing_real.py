"""vLLM's own OpenTelemetry span joins the gateway's trace: the `traceparent` the gateway sends
on a leg makes vLLM's `llm_request` span a child of the gateway's span for that leg."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import sse_payloads, wait_until
from tests.real.conftest import MODEL_NAME, VllmServer, distinct_ports, start_servers, stop_servers
from tests.test_tracing import CLIENT_SPAN, CLIENT_TRACE, TRACEPARENT, Receiver


@pytest.fixture(scope="module")
def traced_vllm(vllm_stack, vllm_logs: Path) -> Iterator[tuple[VllmServer, Receiver]]:
    receiver = Receiver()
    server = VllmServer(
        "traced",
        distinct_ports(1)[0],
        vllm_logs / "traced.log",
        extra_args=["--otlp-traces-endpoint", receiver.url],
        extra_env={"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    start_servers([server])
    yield server, receiver
    stop_servers([server])
    receiver.close()


async def test_vllms_span_is_a_child_of_the_gateways_leg_span(traced_vllm, real_gateway):
    server, receiver = traced_vllm
    tracing = {"otlp_endpoint": receiver.url, "export_interval_s": 0.05}
    gw = await real_gateway([{"name": "real", "workers": [server.url]}], tracing=tracing)
    body = {"model": MODEL_NAME, "prompt": "the quiet road", "max_tokens": 4, "stream": True}
    async with httpx.AsyncClient(timeout=120) as client:
        r = await client.post(f"{gw.url}/v1/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200 and sse_payloads(r.content)[-1] == "[DONE]"
    names = lambda: {s["name"] for s in receiver.trace(CLIENT_TRACE)}  # noqa: E731
    await wait_until(lambda: {"llm_request", "replica", "POST /v1/completions"} <= names(), timeout_s=60, step_s=0.1)
    spans = {s["name"]: s for s in receiver.trace(CLIENT_TRACE)}
    root, leg, vllm = spans["POST /v1/completions"], spans["replica"], spans["llm_request"]
    assert root["parent"] == CLIENT_SPAN and leg["parent"] == root["span_id"]
    assert vllm["parent"] == leg["span_id"] and vllm["service"] != "pd-gateway"
    assert leg["start"] <= vllm["start"]
    assert vllm["attrs"].get("gen_ai.usage.completion_tokens") == 4
