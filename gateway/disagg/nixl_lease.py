"""A prefill's KV lease in read mode (vLLM's NixlConnector): checked when the prefill hands it
over, given back at once when no decode will read it.

After its one-token answer the prefill keeps the request's KV blocks until a decode reads them
(the decode's NIXL notification frees them) or the lease expires (`kv_lease_duration` in the
kv-transfer config, 30 s by default in vLLM 0.32; a decode waiting for the blocks extends it).
Its `kv_transfer_params` name the lease: `remote_host`/`remote_port` (the prefill's NIXL side
channel), `remote_engine_id`, `remote_request_id`, `remote_block_ids`.

From the prefill's answer until the decode leg has a 2xx answer, the gateway owns the lease:
on every way out before that (the decode refused or failed, timed out, could not be reached,
no decode could be chosen, the client left) `give_back` releases it. vLLM's prefill has no API
that frees a lease; its decode does: a request carrying the lease's params that the decode's
serving code refuses makes it tell the prefill "read, done" with nothing read
(GenerateBaseServing._with_kv_transfer_rejection_cleanup -> AsyncLLM.
notify_kv_transfer_request_rejected -> an abort_immediately request, whose
NixlConnectorScheduler.request_finished still has do_remote_prefill set and queues a
notification-only read). So the release asks a decode for a model nobody serves: refused in
`_check_model` before any tokenizing, scheduling or transfer. A decode started with
VLLM_SKIP_MODEL_NAME_VALIDATION runs it instead, with a one-word prompt and one token: it
reads at most a block and frees the lease as any read does.

Once the decode answered 2xx the lease is the decode's: it reads the blocks, or frees them
if the request is aborted before its read.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

from ..errors import UpstreamError, UpstreamStatus
from ..payload import dumps

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..gateway import Gateway
    from ..pool import Endpoint, Pool
    from ..routes import Route

log = logging.getLogger("pd_gateway")

RELEASE_MODEL = "pd-gateway/kv-lease-release"  # no decode serves it: refused before any work
RELEASE_TIMEOUT_S = 10.0  # a third of vLLM's default lease: later, expiry frees it anyway
RELEASE_TRIES = 3  # decodes asked in turn when one cannot be reached
MAX_BLOCK_IDS = 1 << 20
MAX_ID_CHARS = 256
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]{2,45}\]?")
_ID = re.compile(r"[\x21-\x7e]{1,256}")  # MAX_ID_CHARS
_INTS = ("tp_size", "dcp_size", "pp_size")


class BadKVParams(UpstreamError):
    """The prefill's kv_transfer_params are not a lease a decode could read."""

    kind = "invalid"


def checked(params: object, where: str) -> dict:
    """The prefill's `kv_transfer_params`, if they are a well-formed, bounded read-mode lease."""
    problem = _problem(params)
    if problem is not None:
        raise BadKVParams(f"the prefill worker {where} returned unusable kv_transfer_params: {problem}")
    assert isinstance(params, dict)
    return params


def _problem(params: object) -> str | None:
    if not isinstance(params, dict):
        return "not an object; is it a kv_producer?"
    if params.get("do_remote_prefill") is not True:
        return "do_remote_prefill is not true"
    for key in ("remote_engine_id", "remote_request_id"):
        if not isinstance(params.get(key), str) or not _ID.fullmatch(params[key]):
            return f"{key} is not 1-{MAX_ID_CHARS} printable characters"
    host = params.get("remote_host")
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        return "remote_host is not a host name or an IP address"
    if not _int_in(params.get("remote_port"), 1, 65535):
        return "remote_port is not a port number"
    if not _block_ids(params.get("remote_block_ids")):
        return f"remote_block_ids is not a list (or a list per KV-cache group) of at most {MAX_BLOCK_IDS} block ids"
    for key in _INTS:
        if key in params and not _int_in(params[key], 1, 4096):
            return f"{key} is not a positive integer"
    for key, value in params.items():
        if key != "remote_block_ids" and not _scalar(value):
            return f"{json.dumps(key)[:40]} is not a number, a short string, a boolean or null"
    return None


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _block_ids(value: object) -> bool:
    if not isinstance(value, list):
        return False
    groups = value if value and all(isinstance(g, list) for g in value) else [value]
    count = 0
    for group in groups:
        count += len(group)
        if count > MAX_BLOCK_IDS or not all(_int_in(b, 0, 2**62) for b in group):
            return False
    return True


def _scalar(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_ID_CHARS
    return value is None or isinstance(value, (bool, int, float))


def give_back(ctx: RequestContext, pool: Pool, params: dict, avoid: set[Endpoint]) -> None:
    """Release the prefill's lease through one of the pool's decodes, in the background: the
    request that held it is over, or about to be."""
    gateway, route, rid = ctx.gateway, ctx.req.route, ctx.request_id

    async def release() -> None:
        if not await _release(gateway, pool, route, params, rid, avoid):
            log.warning("rid=%s no decode took the prefill's KV lease back; it expires on its own", rid)

    gateway.cleanups.spawn(f"rid={rid} KV lease release", release, RELEASE_TIMEOUT_S)


def release_body(route: Route, params: dict) -> bytes:
    body: dict = {"model": RELEASE_MODEL, "max_tokens": 1, "kv_transfer_params": params}
    if route == "chat":
        body["messages"] = [{"role": "user", "content": "release"}]
    else:
        body["prompt"] = "release"
    return dumps(body)


async def _release(gateway: Gateway, pool: Pool, route: Route, params: dict, rid: str, avoid: set[Endpoint]) -> bool:
    """Ask decodes in turn (healthy ones not to avoid first) until one answers; True once one did."""
    decodes = pool.groups.get("decode", [])
    order = sorted(decodes, key=lambda e: (e in avoid, not e.healthy))[:RELEASE_TRIES]
    body = release_body(route, params)
    headers = gateway.worker_headers(pool, rid)
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    upstream = gateway.upstream
    for ep in order:
        try:
            resp = await upstream.post(ep.url + path, body, headers, lambda _: None)
            await upstream.answer(resp)
            await upstream.read(resp)  # a decode that runs it anyway: it read the lease
        except UpstreamStatus:
            pass  # refused, as asked: the decode frees the lease
        except UpstreamError as err:
            log.info("rid=%s KV lease release via %s failed: %s", rid, ep.url, err.message)
            continue
        log.debug("rid=%s KV lease given back via %s", rid, ep.url)
        return True
    return False
