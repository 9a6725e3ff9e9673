"""Gateway configuration: a YAML file, overridden by CLI flags, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .discovery.config import KubernetesDiscovery
from .extras import check_extra
from .policy_config import LeastOutstandingConfig, PolicyConfig


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # "gateway": uvicorn's httptools protocol with the gateway's short path and head bounds
    # (gateway/protocol.py); "uvicorn": plain uvicorn, for a uvicorn release it was not tested with.
    http: Literal["gateway", "uvicorn"] = "gateway"


class Timeouts(_Strict):
    connect_s: float = Field(5.0, gt=0)
    # Long prompts on Trainium can take minutes to prefill.
    first_byte_s: float = Field(600.0, gt=0)
    between_chunks_s: float = Field(120.0, gt=0)
    total_s: float = Field(3600.0, gt=0)
    # A write to the client that has not drained within this ends the request (the client's
    # fault: its slot and its worker are freed, the worker is not blamed).
    client_write_s: float = Field(30.0, gt=0)


class HealthCheck(_Strict):
    interval_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    healthy_threshold: int = Field(1, ge=1)
    unhealthy_threshold: int = Field(2, ge=1)


class Outlier(_Strict):
    """Passive ejection of workers that keep failing (connect errors, 5xx, timeouts)."""

    consecutive_failures: int = Field(3, ge=1)
    base_ejection_s: float = Field(5.0, gt=0)  # doubles with each repeat ejection
    max_ejection_s: float = Field(300.0, gt=0)
    max_ejection_percent: int = Field(50, ge=0, le=100)


class Retries(_Strict):
    """Retries happen only before any byte reached the client, on another worker."""

    attempts: int = Field(2, ge=0)


class Limits(_Strict):
    max_inflight: int = Field(4096, ge=1)  # whole gateway
    max_inflight_per_worker: int = Field(512, ge=1)
    queue: int = Field(1024, ge=0)  # requests waiting for capacity before 429
    queue_timeout_s: float = Field(30.0, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_tokens: int = Field(1_000_000, ge=1)
    max_n: int = Field(128, ge=1)  # also bounds best_of
    max_sequences: int = Field(256, ge=1)  # prompts x max(n, best_of) in one request
    # The request head and body must arrive in time and in bounds: slow or idle connections
    # are closed (408), oversized heads refused (431).
    header_timeout_s: float = Field(20.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)  # between two reads of the body
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_headers: int = Field(256, ge=8)
    # The front door: connections open at once, and request bodies held at once (from the
    # head that announces one to the request's end); beyond either, 503 and close.
    max_connections: int = Field(8192, ge=1)
    max_buffered_body_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    # One SSE event from a worker (a bigger one ends the stream with an error, never the worker's fault).
    max_event_bytes: int = Field(8 * 1024 * 1024, ge=1024)


Access = Literal["open", "key", "admin", "off"]


class Auth(_Strict):
    api_keys: list[str] = []  # empty: no key needed on /v1
    admin_keys: list[str] = []  # empty: admin endpoints disabled
    # Who may read /metrics and the API docs (/docs, /redoc, /openapi.json): anyone, an API
    # key holder, an admin key holder, or no one. Prometheus scrapers rarely carry keys.
    metrics: Access = "open"
    docs: Access = "key"


class Tenant(_Strict):
    """Who an API key belongs to, and what it may use (gateway/tenants.py)."""

    name: str = Field(min_length=1, max_length=64)
    api_keys: list[str] = Field(min_length=1)
    # Higher classes are served first from the queue; within a class, tenants share capacity
    # by their token work, in proportion to `weight`.
    priority: int = Field(0, ge=0, le=9)
    weight: float = Field(1.0, gt=0)
    # Budgets, None: none. Over one: 429 with Retry-After.
    max_concurrent: int | None = Field(None, ge=1)  # requests in flight or queued at once
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)  # prompt + completion, from usage
    burst_s: float = Field(10.0, gt=0)  # the per-minute budgets may be spent this many seconds' worth at once


class Observability(_Strict):
    """Per-request telemetry; both off leaves only the gauges and rare-event counters on /metrics."""

    request_metrics: bool = True  # per-request histograms and counters
    access_log: bool = True  # one line per request on the `pd_gateway.access` logger


class Tracing(_Strict):
    """W3C trace context on every leg; spans exported over OTLP/HTTP when `otlp_endpoint` is set."""

    # e.g. http://otel-collector:4318/v1/traces; None: the client's traceparent is passed on as it
    # came and nothing of OpenTelemetry is loaded
    otlp_endpoint: str | None = None
    service_name: str = "pd-gateway"
    sample_ratio: float = Field(1.0, ge=0, le=1)  # of requests that come without a sampled parent
    headers: dict[str, str] = {}  # sent with each export (a collector's auth, say)
    export_interval_s: float = Field(5.0, gt=0)  # spans are batched and sent this often
    max_queue: int = Field(4096, ge=1)  # spans waiting for export; beyond it new ones are dropped

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, url: str | None) -> str | None:
        if url is not None:
            _check_url(url)
            check_extra("tracing", "tracing.otlp_endpoint")
        return url


def _check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"worker URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


class PoolConfig(_Strict):
    name: str
    kind: Literal["replicas", "pd"] = "replicas"
    # Served model names; discovered from the workers' /v1/models when empty.
    models: list[str] = []
    workers: list[str] = []
    protocol: Literal["nixl", "neuron-legacy"] | None = None
    prefill: list[str] = []
    decode: list[str] = []
    # Sent to the workers as `Authorization: Bearer`; the client's key never is.
    api_key: str | None = None
    # Client-sent kv_transfer_params would let a client point a worker at a KV source of its
    # choosing: dropped unless the pool's clients are trusted to send them.
    trust_kv_transfer_params: bool = False
    # How an endpoint is chosen: `policy` for replicas, and for a PD pool's roles unless
    # `prefill_policy` / `decode_policy` say otherwise.
    policy: PolicyConfig = LeastOutstandingConfig()
    prefill_policy: PolicyConfig | None = None
    decode_policy: PolicyConfig | None = None
    # Workers found by watching Kubernetes pods instead of listed URLs.
    discovery: KubernetesDiscovery | None = None
    # PD pools (docs/configuration.md, "Prefill/decode availability"): a list of prompts is
    # served as one P->D request per prompt (off: refused with a 400) ...
    split_prompt_lists: bool = True
    # ... run a request on a decode
    # as a plain request when no prefill can take it (nixl only) ...
    decode_local_fallback: bool = True
    # ... or when its prompt has at most this many tokens not cached on the decode (0: always
    # disaggregate) ...
    disaggregate_min_tokens: int = Field(384, ge=0)
    # ... and continue a stream whose worker failed after its first byte on another, at most
    # this many times (0: off; the stream ends with an error event).
    resume_attempts: int = Field(0, ge=0, le=8)

    def policy_for(self, role: str) -> PolicyConfig:
        specific = {"prefill": self.prefill_policy, "decode": self.decode_policy}.get(role)
        return specific or self.policy

    @field_validator("workers", "prefill", "decode")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        return [_check_url(u) for u in urls]

    @model_validator(mode="after")
    def _shape(self) -> PoolConfig:
        if any(self.policy_for(role).name == "precise_prefix" for role in ("replica", "prefill", "decode")):
            check_extra("precise", "policy precise_prefix")
        if self.discovery is not None:
            check_extra("k8s", "Kubernetes discovery")
            if self.workers or self.prefill or self.decode:
                raise ValueError("a pool with 'discovery' lists no 'workers', 'prefill' or 'decode' URLs")
            if self.kind == "pd" and self.protocol is None:
                raise ValueError("a pd pool needs 'protocol': nixl or neuron-legacy")
            return self
        if self.kind == "replicas":
            if not self.workers:
                raise ValueError("a replicas pool needs at least one URL in 'workers'")
            if self.prefill or self.decode or self.protocol or self.prefill_policy or self.decode_policy:
                raise ValueError("'prefill', 'decode', their policies and 'protocol' belong to kind: pd pools")
        else:
            if not self.prefill or not self.decode:
                raise ValueError("a pd pool needs at least one 'prefill' and one 'decode' URL")
            if self.protocol is None:
                raise ValueError("a pd pool needs 'protocol': nixl or neuron-legacy")
            if self.workers:
                raise ValueError("a pd pool lists 'prefill' and 'decode', not 'workers'")
        if (
            self.protocol == "neuron-legacy"
            and "disaggregate_min_tokens" in self.model_fields_set
            and self.disaggregate_min_tokens
        ):
            raise ValueError(
                "'disaggregate_min_tokens' needs protocol nixl: a neuron-legacy decode cannot prefill alone"
            )
        return self


class Tuning(_Strict):
    """Interpreter tuning, opt-in (bench/results/relay.md has the measurements)."""

    # Re-execute `pd-gateway serve` with its heap on transparent huge pages (glibc malloc).
    huge_pages: bool = False
    # Move the start-up heap out of the cyclic collector's sweeps once serving.
    gc_freeze: bool = False


class WorkerMetrics(_Strict):
    """Polling each worker's /metrics (vLLM's running/waiting requests, KV cache usage) into the load score."""

    enabled: bool = True
    interval_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(1.0, gt=0)


class SplitTarget(_Strict):
    model: str = Field(min_length=1)
    weight: int = Field(ge=0)


class Split(_Strict):
    """A public model name whose requests go to served models by weight (a canary); a session
    key (X-Session-Id, else `user`) keeps each session on one of them."""

    split: list[SplitTarget] = Field(min_length=1)

    @model_validator(mode="after")
    def _some_weight(self) -> Split:
        if not sum(t.weight for t in self.split):
            raise ValueError("a split needs some weight above 0")
        return self


class GatewayConfig(_Strict):
    listen: Listen = Listen()
    timeouts: Timeouts = Timeouts()
    health: HealthCheck = HealthCheck()
    outlier: Outlier = Outlier()
    retries: Retries = Retries()
    worker_metrics: WorkerMetrics = WorkerMetrics()
    limits: Limits = Limits()
    auth: Auth = Auth()
    tuning: Tuning = Tuning()
    drain_s: float = Field(30.0, ge=0)  # on SIGTERM, how long in-flight streams may go on
    # gateway processes on the one listening port (SO_REUSEPORT); limits are shared out (processes.py)
    processes: int = Field(1, ge=1, le=256)
    pools: list[PoolConfig] = Field(min_length=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, access lines included
    observability: Observability = Observability()
    # Public model names: another served name (an alias), or a weighted split between several.
    aliases: dict[str, str | Split] = {}
    tracing: Tracing = Tracing()
    tenants: list[Tenant] = []

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        names = [p.name for p in self.pools]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"pool names must be unique; repeated: {sorted(dup)}")
        tenants = [t.name for t in self.tenants]
        if len(set(tenants)) != len(tenants):
            raise ValueError(
                f"tenant names must be unique; repeated: {sorted({n for n in tenants if tenants.count(n) > 1})}"
            )
        keys = [k for t in self.tenants for k in t.api_keys] + self.auth.api_keys
        if len(set(keys)) != len(keys):
            raise ValueError("an API key belongs to one tenant (or to auth.api_keys) only")
        return self


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"config field '{where}': {e['msg']}")
    return "invalid gateway config:\n  " + "\n  ".join(lines)


def parse_config(data: dict) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_config(path: str | Path | None, overrides: dict | None = None) -> GatewayConfig:
    """Read YAML (if any), apply overrides (dotted keys like 'listen.port'), validate."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_config(data)
