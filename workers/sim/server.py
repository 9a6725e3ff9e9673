"""SimServer: routes, request lifecycle and the PD (prefill/decode) protocols."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs, unquote

from .api import VLLM_VERSION, ApiError, GenRequest, fingerprint, parse_body
from .config import SimConfig
from .engine import KVEntry, KVStore, SimStats, block_ids, token_text, with_reply
from .extra_routes import PATHS as EXTRA_PATHS
from .extra_routes import ExtraRoutes
from .generate import TokenStream, respond_full
from .httpserver import HttpConnection, Request
from .metrics import CONTENT_TYPE, new_registry, render
from .observe import models_body, stats_body
from .pd import free_nixl, pull_nixl, wait_legacy
from .prefix_cache import PrefixCache, tokenize
from .request import build_request, remote_kv_of, validate_body
from .sampling import Choices

log = logging.getLogger("workers.sim")
NOT_FOUND = b'{"detail":"Not Found"}'
ROUTES: dict[str, set[str]] = {
    "/health": {"GET"},
    "/ping": {"GET", "POST"},
    "/version": {"GET"},
    "/v1/models": {"GET"},
    "/metrics": {"GET"},
    "/sim/stats": {"GET"},
    "/sim/reset": {"POST"},
    "/v1/completions": {"POST"},
    "/v1/chat/completions": {"POST"},
    **{path: {"POST"} for path in EXTRA_PATHS},
}


class _Life:
    """Counts one accepted generate request out of in_flight exactly once."""

    def __init__(self, stats: SimStats) -> None:
        self._stats = stats
        self.ended = False
        self.kv_blocks = 0
        self.finish_reason = "length"
        stats.in_flight += 1

    def hold_blocks(self, blocks: int) -> None:
        """KV blocks this request occupies until it ends (vllm:kv_cache_usage_perc)."""
        if not self.ended:
            self.kv_blocks += blocks
            self._stats.kv_blocks_in_use += blocks

    def end(self, outcome: str, tokens: int = 0) -> None:
        if self.ended:
            return
        self.ended = True
        s = self._stats
        s.in_flight -= 1
        s.kv_blocks_in_use -= self.kv_blocks
        s.generation_tokens_total += tokens
        if outcome == "completed":
            s.completed += 1
            s.finished[self.finish_reason] = s.finished.get(self.finish_reason, 0) + 1
        elif outcome == "cancelled":
            s.cancelled += 1
        elif outcome == "aborted":
            s.aborted += 1
        else:
            s.errors += 1


class SimServer:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.kv_by_id = KVStore(config.kv_hold_s, self.stats)  # nixl: fresh id per prefill
        self.kv_by_request = KVStore(config.kv_hold_s, self.stats)  # legacy: X-Request-Id
        self._conns: set[HttpConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._next_block = 0
        slots = config.prefill_concurrency
        self._prefill_slots = asyncio.Semaphore(slots) if slots > 0 else None
        self.prefix_cache = PrefixCache(config.prefix_cache_blocks, config.block_size, config.enable_prefix_caching)
        self.metrics = new_registry(self)
        self.system_fingerprint = fingerprint(config.model, config.max_model_len)
        self.extra = ExtraRoutes(self)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> SimServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self, self._conns),
            self.config.host,
            self.config.port,
            backlog=4096,
            reuse_address=True,
        )
        return self

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self._advertised_host()}:{self.port}"

    def _advertised_host(self) -> str:
        if self.config.advertise_host:
            return self.config.advertise_host
        host = self.config.host
        return "127.0.0.1" if host in ("0.0.0.0", "::", "", "localhost") else host

    @property
    def kv_held_blocks(self) -> int:
        """KV blocks this prefill holds for decodes that have not read them yet."""
        tokens = self.kv_by_id.held_tokens() + self.kv_by_request.held_tokens()
        return sum(self.prefix_cache.blocks_for(t) for t in tokens)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns):
            conn.abort()
        self.kv_by_id.clear()
        self.kv_by_request.clear()
        await self._server.wait_closed()
        self._server = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    def _spawn(self, conn: HttpConnection, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def cancel() -> None:
            task.cancel()

        conn.on_lost = cancel

    # -- routing -----------------------------------------------------------
    def handle(self, conn: HttpConnection, req: Request) -> None:
        path, method = req.path, req.method
        if path.startswith("/sim/kv/") and method == "GET":
            return self._spawn(conn, self._kv_endpoint(conn, req))
        if path.startswith("/sim/kv/") and method == "DELETE":
            freed = self.kv_by_id.discard(unquote(path[len("/sim/kv/") :]))
            return conn.send_json(200 if freed else 404, {"freed": freed})
        if path.startswith("/v1/responses/"):
            return self._stored_response(conn, path, method)
        methods = ROUTES.get(path)
        if methods is None:
            return conn.send(404, NOT_FOUND)
        if method not in methods:
            return conn.send(405, b'{"detail":"Method Not Allowed"}')
        if path in ("/v1/completions", "/v1/chat/completions"):
            return self._accept(conn, req, chat=path == "/v1/chat/completions")
        if path in EXTRA_PATHS:
            return self.extra.handle(conn, req)
        self._simple(conn, path)

    def _stored_response(self, conn: HttpConnection, path: str, method: str) -> None:
        rest = path[len("/v1/responses/") :]
        if method == "GET" and "/" not in rest:
            return self.extra.responses.retrieve(conn, unquote(rest))
        if method == "POST" and rest.endswith("/cancel") and rest.count("/") == 1:
            return self.extra.responses.cancel(conn, unquote(rest[: -len("/cancel")]))
        conn.send(404, NOT_FOUND)

    def _simple(self, conn: HttpConnection, path: str) -> None:
        if path in ("/health", "/ping"):
            conn.send(200, b"")
        elif path == "/version":
            conn.send_json(200, {"version": VLLM_VERSION})
        elif path == "/v1/models":
            body = models_body(self.config)
            body["data"] += self.extra.model_cards(body["data"][0]["created"])
            conn.send_json(200, body)
        elif path == "/metrics":
            conn.send(200, render(self.metrics), CONTENT_TYPE)
        elif path == "/sim/stats":
            conn.send_json(200, stats_body(self))
        elif path == "/sim/reset":
            self.stats.reset()
            self.prefix_cache.reset()
            conn.send_json(200, {"ok": True})

    async def _kv_endpoint(self, conn: HttpConnection, req: Request) -> None:
        rest = req.path[len("/sim/kv/") :]
        if rest.startswith("by-request/"):
            wait_ms = parse_qs(req.query).get("wait_ms", ["0"])[0]
            key = unquote(rest[len("by-request/") :])
            entry = await self.kv_by_request.wait_take(key, max(0.0, float(wait_ms) / 1000))
        else:
            entry = self.kv_by_id.take(unquote(rest))
        if entry is None:
            return conn.send_json(404, ApiError(404, f"KV `{unquote(rest)}` not found").to_json())
        self.stats.kv_sent += 1
        conn.send_json(200, entry.to_json())

    # -- generate ----------------------------------------------------------
    def _accept(self, conn: HttpConnection, req: Request, chat: bool) -> None:
        s = self.stats
        s.requests_total += 1
        id_header = req.headers.get("x-request-id")
        if id_header is not None:
            s.request_ids.append(id_header)
        s.last_request_headers = req.headers
        try:
            body = parse_body(req.body)
            s.last_request_body = body
            model = validate_body(body, chat)  # a refusal up to here frees nothing, as in vLLM
        except ApiError as exc:
            s.errors += 1
            return self._send_error(conn, exc, id_header)
        try:
            served = _model_of(body) if self.extra.serves(_model_of(body)) else None  # an adapter loaded here
            g = build_request(model, chat, id_header, served or self.config.model, self.config.max_model_len)
            g.report_cached = self.config.enable_prompt_tokens_details
        except ApiError as exc:
            s.errors += 1
            self._free_remote_kv(remote_kv_of(model))  # vLLM's _with_kv_transfer_rejection_cleanup
            return self._send_error(conn, exc, id_header)
        if g.remote_kv is not None and self.config.decode_fault_status:
            s.errors += 1  # a decode failing outside vLLM's serving code: nobody frees the KV
            status = self.config.decode_fault_status
            return self._send_error(
                conn, ApiError(status, "Injected decode failure (--decode-fault-status)."), id_header
            )
        self._spawn(conn, self._generate(conn, g, _Life(s)))

    def _free_remote_kv(self, params: dict[str, Any] | None) -> None:
        """Tell the prefill that holds a request's KV to free it: the request ends unread."""
        if params is None or self.config.kv_protocol != "nixl":
            return
        task = asyncio.get_running_loop().create_task(free_nixl(params, self.config.kv_wait_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_error(self, conn: HttpConnection, exc: ApiError, id_header: str | None) -> None:
        conn.send_json(exc.status, exc.to_json(), _id_headers(id_header))

    async def _generate(self, conn: HttpConnection, g: GenRequest, life: _Life) -> None:
        cfg = self.config
        started = False
        try:
            first_tokens, kv_out = await self._prefill(g)
            life.hold_blocks(
                sum(
                    self.prefix_cache.blocks_for(g.prompt_tokens[c // g.n] + g.max_tokens) for c in range(g.num_choices)
                )
            )
            self.stats.prompt_tokens_total += g.total_prompt_tokens
            choices = Choices(g, first_tokens)
            if cfg.prefix_cache_outputs and g.kv_params is None:
                self._cache_outputs(g, choices)
            life.finish_reason = choices.plans[0].finish_reason
            headers = _id_headers(g.id_header)
            fail_after = cfg.fail_after_tokens
            if g.stream:
                stream = TokenStream(conn, g, choices, cfg.itl_ms / 1000, fail_after, life.end, self.system_fingerprint)
                started = True
                stream.start(headers)
            else:
                await respond_full(
                    conn, g, choices, cfg.itl_ms / 1000, fail_after, headers, kv_out, life.end, self.system_fingerprint
                )
        except ApiError as exc:
            life.end("error")
            self._free_unread(g)
            self._send_error(conn, exc, g.id_header)
        except asyncio.CancelledError:
            life.end("cancelled")
            self._free_unread(g)
        except Exception:  # a simulator bug answers (or drops the stream), never hangs
            log.exception("sim worker: request failed")
            life.end("error")
            if started:
                conn.abort()
            else:
                self._send_error(conn, ApiError(500, "Internal error in the simulated worker."), g.id_header)

    def _free_unread(self, g: GenRequest) -> None:
        """A decode request that ends before reading its remote prefill's KV frees it (in vLLM: an
        aborted request still waiting for its KV tells the prefill it read nothing)."""
        if g.remote_kv is not None and not g.kv_settled:
            g.kv_settled = True
            self._free_remote_kv(g.remote_kv)

    async def _prefill(self, g: GenRequest) -> tuple[list[str] | None, dict[str, Any] | None]:
        """Run (or fetch) the prefill.  Returns (k=0 tokens taken from KV, kv_transfer_params
        for the response)."""
        cfg, kv = self.config, g.kv_params
        if kv is not None and cfg.kv_protocol != "nixl":
            raise ApiError(400, "kv_transfer_params requires a worker with --kv-protocol nixl.", "kv_transfer_params")
        if kv is not None and kv.get("do_remote_decode"):
            return None, await self._nixl_prefill(g)
        if kv is not None and kv.get("do_remote_prefill"):
            return await self._nixl_decode(g, kv), None
        if cfg.kv_protocol == "neuron-legacy" and cfg.role == "decode":
            return await self._legacy_decode(g), None
        await self._local_prefill(g)
        if cfg.kv_protocol == "neuron-legacy" and cfg.role == "prefill" and g.id_header:
            self.kv_by_request.put(self._kv_entry(g, g.id_header))
        return None, None

    async def _local_prefill(self, g: GenRequest) -> None:
        """Prefill charged on the uncached suffix only: ttft + per-token cost of the misses."""
        cfg = self.config
        cached = self._admit_prefixes(g)
        computed = g.total_prompt_tokens - cached
        delay = (cfg.ttft_ms + cfg.prefill_ms_per_token * computed) / 1000
        if delay > 0:
            if self._prefill_slots is None:
                await asyncio.sleep(delay)
            else:
                async with self._prefill_slots:  # queued behind the prefills before it
                    await asyncio.sleep(delay)
        self.stats.local_prefill_tokens += computed
        self.stats.local_cache_hit_tokens += cached

    def _admit_prefixes(self, g: GenRequest) -> int:
        """Query and fill the prefix cache once per sample (as vLLM's n child requests);
        returns the cached tokens of each prompt's first sample, which is what is charged."""
        cached = 0
        for c in range(g.num_choices):
            result = self.prefix_cache.admit(tokenize(g.prompt_of(c)))
            if g.sample_index(c) == 0:
                cached += result.cached_tokens
        g.cached_tokens = cached
        return cached

    def _cache_outputs(self, g: GenRequest, choices: Choices) -> None:
        """vLLM caches the blocks of the tokens it generates too: a chat's next turn, which re-sends
        this reply after the prompt (render_chat's `assistant:` line), finds them here."""
        for c in range(g.num_choices):
            self.prefix_cache.store(tokenize(with_reply(g.prompt_of(c), choices.text(c), g.chat)))

    def _kv_entry(self, g: GenRequest, key: str) -> KVEntry:
        firsts = [token_text(g.prompt_of(c), g.sample_index(c), 0) for c in range(g.num_choices)]
        blocks = block_ids(g.total_prompt_tokens, self._next_block)
        self._next_block += len(blocks)
        return KVEntry(
            key=key,
            engine_id=self.config.engine_id,
            prompts=g.prompts,
            first_tokens=firsts,
            prompt_tokens=g.total_prompt_tokens,
            block_ids=blocks,
        )

    async def _nixl_prefill(self, g: GenRequest) -> dict[str, Any]:
        if self.config.role == "decode":
            raise ApiError(400, "do_remote_decode sent to a decode-only worker.", "kv_transfer_params")
        if g.stream:
            raise ApiError(400, "Prefill requests with do_remote_decode must not stream.", "stream")
        if g.max_tokens != 1 or len(g.prompts) != 1:
            raise ApiError(
                400, "Prefill requests with do_remote_decode need max_tokens=1 and a single prompt.", "max_tokens"
            )
        await self._local_prefill(g)
        entry = self._kv_entry(g, f"{g.base_id}-{uuid.uuid4().hex[:12]}")
        self.kv_by_id.put(entry)
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": self.config.engine_id,
            "remote_block_ids": entry.block_ids,
            "remote_host": self._advertised_host(),
            "remote_port": self.port,
            "remote_request_id": entry.key,
            "tp_size": 1,
        }

    async def _nixl_decode(self, g: GenRequest, kv: dict[str, Any]) -> list[str] | None:
        if self.config.role == "prefill":
            raise ApiError(400, "do_remote_prefill sent to a prefill-only worker.", "kv_transfer_params")
        if self.config.decode_stall_s > 0:
            g.kv_settled = True  # a stuck decode: cancelled meanwhile, it frees nothing
            await asyncio.sleep(self.config.decode_stall_s)
        g.kv_settled = True  # the read frees the prefill's KV, whatever it finds
        entry = await pull_nixl(kv, self.config.kv_wait_s)
        if entry is None:
            # vLLM falls back to recomputing the prefill locally when the KV read fails.
            self.stats.kv_pull_failed += 1
            await self._local_prefill(g)
            return None
        self._check_prompts(g, entry)
        return self._received(g, entry)

    async def _legacy_decode(self, g: GenRequest) -> list[str]:
        rid = g.id_header
        if not rid:
            raise ApiError(400, "X-Request-Id header is required by a neuron-legacy decode worker.")
        entry = await wait_legacy(self.config.kv_peers, rid, self.config.kv_wait_s)
        if entry is None:
            self.stats.kv_wait_timeouts += 1
            raise ApiError(503, f"KV for request {rid} not received")
        self._check_prompts(g, entry)
        return self._received(g, entry)

    def _check_prompts(self, g: GenRequest, entry: KVEntry) -> None:
        if entry.prompts != g.prompts:
            raise ApiError(
                400,
                f"KV transfer mismatch: prompt of request {entry.key} differs "
                "from the prompt the prefill worker computed.",
                "kv_transfer_params",
            )

    def _received(self, g: GenRequest, entry: KVEntry) -> list[str]:
        self.stats.kv_received += 1
        self.stats.external_prefill_tokens += g.total_prompt_tokens
        return entry.first_tokens


def _model_of(body: object) -> str | None:
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def _id_headers(id_header: str | None) -> list[tuple[str, str]]:
    return [("x-request-id", id_header)] if id_header else []


async def start_sim(config: SimConfig | dict[str, Any] | None = None) -> SimServer:
    """Start a simulated worker in the running event loop (port 0 = ephemeral)."""
    return await SimServer(SimConfig.from_any(config)).start()
