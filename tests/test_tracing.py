"""W3C trace context through the gateway, and the spans it exports over OTLP/HTTP to a
receiver in this process (opentelemetry-proto decodes what the SDK's exporter sent)."""

from __future__ import annotations

import asyncio
import gzip
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.config import ConfigError, parse_config
from tests.conftest import sse_payloads, wait_until

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


class Receiver:
    """An OTLP/HTTP traces endpoint: every span it was sent, as dicts."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        spans = self.spans

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                    for scope in resource.scope_spans:
                        spans.extend(_span(s, service) for s in scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def trace(self, trace_id: str) -> list[dict]:
        return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _span(s: object, service: str) -> dict:
    def value(v: object) -> object:
        kind = v.WhichOneof("value")  # type: ignore[attr-defined]
        return getattr(v, kind) if kind else None

    return {
        "service": service,
        "name": s.name,  # type: ignore[attr-defined]
        "trace_id": s.trace_id.hex(),  # type: ignore[attr-defined]
        "span_id": s.span_id.hex(),  # type: ignore[attr-defined]
        "parent": s.parent_span_id.hex(),  # type: ignore[attr-defined]
        "start": s.start_time_unix_nano,  # type: ignore[attr-defined]
        "end": s.end_time_unix_nano,  # type: ignore[attr-defined]
        "attrs": {a.key: value(a.value) for a in s.attributes},  # type: ignore[attr-defined]
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def _pd(sim, gateway, receiver: Receiver | None, **pool: object):
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl", kv_peers=[p.url], itl_ms=1)
    tracing = {"otlp_endpoint": receiver.url, "export_interval_s": 0.05} if receiver else {}
    pools = [
        {
            "name": "pd",
            "kind": "pd",
            "protocol": "nixl",
            "prefill": [p.url],
            "decode": [d.url],
            "disaggregate_min_tokens": 0,
            **pool,
        }
    ]
    gw = await gateway(pools, tracing=tracing)
    return p, d, gw


BODY = {"model": "sim-model", "prompt": "trace me through both legs", "max_tokens": 4, "stream": True}


async def test_one_trace_per_pd_request_covers_both_legs_under_the_clients_trace(receiver, sim, gateway, client):
    p, d, gw = await _pd(sim, gateway, receiver)
    body = {**BODY, "stream_options": {"include_usage": True}}
    r = await client.post(f"{gw.url}/v1/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    sse_payloads(r.content)
    await wait_until(lambda: len(receiver.trace(CLIENT_TRACE)) >= 4, timeout_s=5)
    spans = {s["name"]: s for s in receiver.trace(CLIENT_TRACE)}
    assert set(spans) == {"POST /v1/completions", "prefill", "kv_handoff", "decode"}  # admitted at once: no queue span
    root = spans["POST /v1/completions"]
    assert root["parent"] == CLIENT_SPAN and root["service"] == "pd-gateway"
    assert root["attrs"]["pd_gateway.outcome"] == "success" and root["attrs"]["gen_ai.usage.output_tokens"] == 4
    assert root["attrs"]["pd_gateway.queue_ms"] < 0.5
    for name in ("prefill", "kv_handoff", "decode"):
        assert spans[name]["parent"] == root["span_id"], name
        assert root["start"] <= spans[name]["start"] <= spans[name]["end"] <= root["end"], name
    prefill, decode = spans["prefill"], spans["decode"]
    assert prefill["attrs"]["pd_gateway.endpoint"] == p.url and decode["attrs"]["pd_gateway.endpoint"] == d.url
    assert prefill["attrs"]["pd_gateway.pool"] == "pd" and decode["attrs"]["gen_ai.request.model"] == "sim-model"
    assert prefill["end"] <= spans["kv_handoff"]["start"] and decode["attrs"]["gen_ai.usage.output_tokens"] == 4
    # the workers' own spans would hang under the gateway's span for their leg
    assert d.stats.last_request_headers["traceparent"] == f"00-{CLIENT_TRACE}-{decode['span_id']}-01"
    assert p.stats.last_request_headers["traceparent"] == f"00-{CLIENT_TRACE}-{prefill['span_id']}-01"
    # and one trace per request: a second request without a parent starts a trace of its own
    await client.post(f"{gw.url}/v1/completions", json=BODY)
    await wait_until(lambda: len({s["trace_id"] for s in receiver.spans}) == 2, timeout_s=5)
    assert len(receiver.trace(CLIENT_TRACE)) == 4


async def test_a_request_that_waited_for_admission_has_a_queue_span(receiver, sim, gateway, client):
    w = await sim(itl_ms=20)
    tracing = {"otlp_endpoint": receiver.url, "export_interval_s": 0.05}
    gw = await gateway([{"name": "dp", "workers": [w.url]}], tracing=tracing, limits={"max_inflight": 1})
    body = {**BODY, "max_tokens": 5}
    first = asyncio.create_task(client.post(f"{gw.url}/v1/completions", json={**body, "max_tokens": 25}))
    await wait_until(lambda: gw.gateway.admission.inflight == 1)
    second = await client.post(f"{gw.url}/v1/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert (await first).status_code == second.status_code == 200
    await wait_until(lambda: len(receiver.trace(CLIENT_TRACE)) == 3, timeout_s=5)
    spans = {s["name"]: s for s in receiver.trace(CLIENT_TRACE)}
    assert set(spans) == {"POST /v1/completions", "queue", "replica"}
    queue, replica = spans["queue"], spans["replica"]
    assert queue["end"] - queue["start"] > 20e6  # waited for the first request's stream (24 x 20 ms)
    assert queue["end"] <= replica["start"] and queue["parent"] == spans["POST /v1/completions"]["span_id"]


async def test_access_line_carries_the_trace_id(receiver, sim, gateway, client, caplog):
    _, _, gw = await _pd(sim, gateway, receiver)
    with caplog.at_level("INFO", logger="pd_gateway.access"):
        await client.post(f"{gw.url}/v1/completions", json=BODY, headers={"traceparent": TRACEPARENT})
        await wait_until(lambda: any("trace_id=" in r.message for r in caplog.records))
    line = next(r.message for r in caplog.records if r.name == "pd_gateway.access")
    assert f"trace_id={CLIENT_TRACE}" in line


async def test_a_retried_leg_is_a_span_of_its_own(receiver, sim, gateway, client):
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl", kv_peers=[p.url])
    dead = "http://127.0.0.1:9"  # the discard port: connection refused
    pools = [
        {
            "name": "pd",
            "kind": "pd",
            "protocol": "nixl",
            "prefill": [dead, p.url],
            "decode": [d.url],
            "disaggregate_min_tokens": 0,
        }
    ]
    gw = await gateway(pools, tracing={"otlp_endpoint": receiver.url, "export_interval_s": 0.05})
    gw.gateway.pools[0].groups["prefill"][0].healthy = True  # as if it had just died
    for _ in range(4):
        r = await client.post(f"{gw.url}/v1/completions", json=BODY, headers={"traceparent": TRACEPARENT})
        assert r.status_code == 200
    await wait_until(lambda: len([s for s in receiver.spans if s["name"] == "decode"]) == 4, timeout_s=5)
    prefills = [s for s in receiver.spans if s["name"] == "prefill"]
    failed = [s for s in prefills if s["attrs"]["pd_gateway.outcome"] == "failed"]
    assert failed and all(s["attrs"]["pd_gateway.endpoint"] == dead for s in failed)
    assert len(prefills) == 4 + len(failed)


async def test_without_an_endpoint_the_clients_context_passes_through_unchanged(sim, gateway, client, caplog):
    _, d, gw = await _pd(sim, gateway, None)
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    with caplog.at_level("INFO", logger="pd_gateway.access"):
        await client.post(f"{gw.url}/v1/completions", json=BODY, headers=headers)
        await wait_until(lambda: any(r.name == "pd_gateway.access" for r in caplog.records))
    assert f"trace_id={CLIENT_TRACE}" in next(r.message for r in caplog.records if r.name == "pd_gateway.access")
    assert d.stats.last_request_headers["traceparent"] == TRACEPARENT
    assert d.stats.last_request_headers["tracestate"] == "vendor=abc"
    await client.post(f"{gw.url}/v1/completions", json=BODY, headers={"traceparent": "00-zz-bad"})
    assert "traceparent" not in d.stats.last_request_headers  # an invalid header is not passed on


async def test_an_unsampled_parent_is_followed_and_a_new_trace_is_started_without_one(receiver, sim, gateway, client):
    _, d, gw = await _pd(sim, gateway, receiver)
    unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    await client.post(f"{gw.url}/v1/completions", json=BODY, headers={"traceparent": unsampled})
    sent = d.stats.last_request_headers["traceparent"]
    assert sent.startswith(f"00-{CLIENT_TRACE}-") and sent.endswith("-00") and CLIENT_SPAN not in sent
    await client.post(f"{gw.url}/v1/completions", json=BODY)
    fresh = d.stats.last_request_headers["traceparent"].split("-")
    assert fresh[1] != CLIENT_TRACE and fresh[3] == "01"
    await wait_until(lambda: len(receiver.spans) >= 4, timeout_s=5)
    await asyncio.to_thread(gw.gateway.tracing.flush)
    assert {s["trace_id"] for s in receiver.spans} == {fresh[1]}  # the unsampled trace was not exported


def test_an_endpoint_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"tracing.otlp_endpoint.*pip install 'pd-gateway\[tracing\]'"):
        parse_config(
            {
                "pools": [{"name": "a", "workers": ["http://127.0.0.1:9"]}],
                "tracing": {"otlp_endpoint": "http://127.0.0.1:9"},
            }
        )


async def test_neuron_legacy_legs_each_get_their_own_span_as_parent(receiver, sim, gateway, client):
    p = await sim(role="prefill", kv_protocol="neuron-legacy")
    d = await sim(role="decode", kv_protocol="neuron-legacy", kv_peers=[p.url])
    pools = [{"name": "pd", "kind": "pd", "protocol": "neuron-legacy", "prefill": [p.url], "decode": [d.url]}]
    gw = await gateway(pools, tracing={"otlp_endpoint": receiver.url, "export_interval_s": 0.05})
    r = await client.post(f"{gw.url}/v1/completions", json=BODY, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    await wait_until(lambda: {"prefill", "decode"} <= {s["name"] for s in receiver.trace(CLIENT_TRACE)}, timeout_s=5)
    spans = {s["name"]: s for s in receiver.trace(CLIENT_TRACE)}
    for worker, role in ((p, "prefill"), (d, "decode")):
        assert worker.stats.last_request_headers["traceparent"] == f"00-{CLIENT_TRACE}-{spans[role]['span_id']}-01"
