"""The gateway's metric families, on one registry per gateway (no process-wide globals).

Latency buckets run from 0.5 ms (a simulated worker's token) to 10 minutes (a long prompt's
prefill on Trainium, bounded by the first-byte timeout), roughly 1-2-5 per decade.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
REQUEST_LABELS = ("pool", "model", "route")
ENDPOINT_LABELS = ("pool", "role", "endpoint")


class Families:
    """Every counter and histogram the gateway exports; gauges come from `PoolStateCollector`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def hist(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=registry)

        def count(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        p = "pd_gateway_"
        self.ttft = hist(
            p + "ttft_seconds", "Request arrival to the first event sent to the client (streams).", REQUEST_LABELS
        )
        self.itl = hist(
            p + "itl_seconds",
            "Mean gap between a stream's tokens, one observation per stream: (end - first event) / (tokens - 1).",
            REQUEST_LABELS,
        )
        self.e2e = hist(p + "e2e_seconds", "Request arrival to the last byte of the response.", REQUEST_LABELS)
        self.queue = hist(
            p + "queue_seconds", "Time a request waited in the admission queue (0 when admitted at once).", ("route",)
        )
        self.prefill = hist(
            p + "pd_prefill_seconds",
            "PD pools: the prefill leg, request sent to prefill done.",
            ("pool", "model", "endpoint"),
        )
        self.handoff = hist(
            p + "pd_handoff_seconds",
            "PD pools: prefill done to the decode worker's first event (KV hand-off gap).",
            ("pool", "model", "endpoint"),
        )
        self.requests = count(
            p + "requests",
            "Requests by final outcome; a stream that ends with an error event is outcome=stream_error, not success.",
            (*REQUEST_LABELS, "status", "outcome"),
        )
        self.prompt_tokens = count(p + "prompt_tokens", "Prompt tokens, from the workers' usage.", ("pool", "model"))
        self.completion_tokens = count(
            p + "completion_tokens", "Completion tokens, from the workers' usage.", ("pool", "model")
        )
        self.retries = count(
            p + "retries", "Requests sent again to another worker after a failure before any answer.", ("pool", "role")
        )
        self.replays = count(
            p + "replays",
            "Streams replayed on another replica after a worker broke off before the first event.",
            ("pool",),
        )
        self.decode_local = count(
            p + "pd_decode_local",
            "PD pools: requests served by a decode alone, by reason: no_prefill, prefill_full, prefill_failed "
            "(decode-local fallback) or short_prompt (selective disaggregation).",
            ("pool", "reason"),
        )
        self.resumes = count(
            p + "stream_resumes",
            "Streams continued on another worker after theirs failed mid-stream, by outcome: resumed or gave_up.",
            ("pool", "outcome"),
        )
        self.ejections = count(p + "ejections", "Outlier ejections of a worker.", ENDPOINT_LABELS)
        self.upstream_failures = count(
            p + "upstream_failures",
            "Failed upstream calls by kind: connect, timeout, 5xx, broken_stream, invalid (garbage).",
            (*ENDPOINT_LABELS, "kind"),
        )
        self.disconnects = count(
            p + "client_disconnects",
            "Clients that went away before their response ended, by phase: before_response or streaming.",
            ("route", "phase"),
        )
