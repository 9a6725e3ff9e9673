"""The prefill's KV lease in a PD pool (protocol: nixl): the gateway gives it back at once on every
path where no decode will read it, refuses before the prefill what the decode would refuse, and
forwards only well-formed kv_transfer_params. Simulated workers hold the KV as vLLM 0.32 does
(until a decode reads it, a decode's notification frees it, or --kv-hold-s expires it)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.cleanups import Cleanups
from gateway.disagg.nixl_lease import RELEASE_MODEL
from tests.conftest import wait_until
from tests.faulty import MODELS

PROMPT = "the prefill keeps this prompt's KV until a decode reads it"
BODY = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 4}
SLOW_HEALTH = {"interval_s": 60, "timeout_s": 0.5, "healthy_threshold": 1, "unhealthy_threshold": 1}


def _pool(prefill: list[str], decode: list[str], **extra: object) -> list[dict]:
    return [
        {
            "name": "pd",
            "kind": "pd",
            "disaggregate_min_tokens": 0,
            "protocol": "nixl",
            "prefill": prefill,
            "decode": decode,
            **extra,
        }
    ]


async def _released(p) -> None:
    """P's lease was freed by a decode's notification well before it would expire (kv_hold_s=30)."""
    await wait_until(lambda: len(p.kv_by_id) == 0 and p.stats.kv_released == 1)
    assert p.stats.kv_expired == 0


async def test_a_read_lease_is_not_given_back(sim, gateway, client):
    p = await sim(role="prefill")
    d = await sim(role="decode")
    gw = await gateway(_pool([p.url], [d.url]))
    for stream in (False, True):
        r = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": stream})
        assert r.status_code == 200
    assert d.stats.requests_total == 2 and d.stats.kv_received == 2  # no release request followed
    assert p.stats.kv_sent == 2 and p.stats.kv_released == 0 and len(p.kv_by_id) == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_decode_refusal_gives_the_lease_back(sim, gateway, client, stream):
    p = await sim(role="prefill")
    d = await sim(role="decode", decode_fault_status=400)  # refuses outside vLLM's serving code
    gw = await gateway(_pool([p.url], [d.url]))
    r = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": stream})
    assert r.status_code == 400
    await _released(p)
    assert d.stats.last_request_body["model"] == RELEASE_MODEL
    assert d.stats.last_request_body["kv_transfer_params"]["remote_port"] == p.port


async def test_decode_failing_before_its_read_gives_the_lease_back_once_retries_are_exhausted(sim, gateway, client):
    p = await sim(role="prefill")
    ds = [await sim(role="decode", decode_fault_status=503) for _ in range(2)]
    gw = await gateway(_pool([p.url], [d.url for d in ds]), retries={"attempts": 1})
    r = await client.post(
        f"{gw.url}/v1/chat/completions", json={"model": "sim-model", "messages": [{"role": "user", "content": PROMPT}]}
    )
    assert r.status_code == 502
    await _released(p)


async def test_client_leaving_between_the_legs_gives_the_lease_back(sim, gateway):
    p = await sim(role="prefill")
    d = await sim(role="decode", itl_ms=50)
    gw = await gateway(_pool([p.url], [d.url]), limits={"max_inflight_per_worker": 1})
    async with httpx.AsyncClient(timeout=10) as c:
        busy = {**BODY, "max_tokens": 200, "stream": True}
        async with c.stream("POST", f"{gw.url}/v1/completions", json=busy) as first:
            events = first.aiter_raw()
            await events.__anext__()  # the decode is taken: the next decode leg waits for it
            second = asyncio.create_task(c.post(f"{gw.url}/v1/completions", json=BODY))
            await wait_until(lambda: len(p.kv_by_id) == 1)  # P answered: the lease is held
            second.cancel()  # the client leaves while its decode leg waits
            await _released(p)
    assert d.stats.kv_received == 1  # only the first request's KV was read


async def test_decode_timeout_gives_the_lease_back(sim, gateway, client):
    p = await sim(role="prefill")
    d = await sim(role="decode", decode_stall_s=30)  # hangs before reading, frees nothing itself
    gw = await gateway(_pool([p.url], [d.url]), timeouts={"first_byte_s": 0.3})
    r = await client.post(f"{gw.url}/v1/completions", json=BODY)
    assert r.status_code == 504
    await _released(p)


async def test_decode_refusing_connections_gives_the_lease_back_through_another_decode(sim, gateway, client):
    p = await sim(role="prefill")
    dead = await sim(role="decode")
    live = await sim(role="decode")
    gw = await gateway(_pool([p.url], [dead.url, live.url]), retries={"attempts": 0}, health=SLOW_HEALTH)
    await dead.close()  # still healthy to the gateway: the next health check is a minute away
    codes = [(await client.post(f"{gw.url}/v1/completions", json=BODY)).status_code for _ in range(2)]
    assert sorted(codes) == [200, 502]  # round robin: one request met the closed port
    await _released(p)  # through the live decode: the notification reached P


@pytest.mark.parametrize(
    "extra",
    [
        {"min_tokens": 9},
        {"min_tokens": -1},
        {"min_tokens": "many"},
        {"stream_options": {"include_usage": True}},
        {"stream": True, "stream_options": {"include_usage": "maybe"}},
    ],
)
async def test_what_the_decode_refuses_is_refused_before_the_prefill_runs(sim, gateway, client, extra):
    await _refused_before_the_prefill(sim, gateway, client, "completions", {**BODY, **extra})


async def test_a_chat_decode_refusal_is_refused_before_the_prefill_runs(sim, gateway, client):
    chat = {"model": "sim-model", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 50}
    await _refused_before_the_prefill(
        sim, gateway, client, "chat/completions", {**chat, "max_completion_tokens": 3, "min_tokens": 4}
    )


async def _refused_before_the_prefill(sim, gateway, client, route: str, body: dict) -> None:
    p = await sim(role="prefill")
    d = await sim(role="decode")
    vllm = await sim()  # answers as vLLM 0.32 does
    gw = await gateway(_pool([p.url], [d.url]))
    want = await client.post(f"{vllm.url}/v1/{route}", json=body)
    got = await client.post(f"{gw.url}/v1/{route}", json=body)
    assert want.status_code == got.status_code == 400
    assert got.json() == want.json()
    assert p.stats.requests_total == 0 and d.stats.requests_total == 0


async def test_prompt_logprobs_on_a_stream_are_refused_before_the_prefill_runs(sim, gateway, client):
    p = await sim(role="prefill")
    d = await sim(role="decode")
    gw = await gateway(_pool([p.url], [d.url]))
    r = await client.post(f"{gw.url}/v1/completions", json={**BODY, "stream": True, "prompt_logprobs": 1})
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "`prompt_logprobs` are not available when `stream=True`. (parameter=prompt_logprobs)",
            "type": "BadRequestError",
            "param": "prompt_logprobs",
            "code": 400,
        }
    }
    assert p.stats.requests_total == 0


GOOD_PARAMS = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_engine_id": "engine-1",
    "remote_request_id": "cmpl-1-0",
    "remote_host": "10.0.0.7",
    "remote_port": 5600,
    "remote_block_ids": [1, 2, 3],
    "tp_size": 1,
}


class CannedPrefill:
    """A prefill that answers every POST with the same JSON body."""

    def __init__(self, params: object) -> None:
        answer = {"id": "cmpl-1", "object": "text_completion", "choices": [], "kv_transfer_params": params}
        self.body = json.dumps(answer).encode()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0
                )
                await reader.readexactly(length)
                body = self.body if head.startswith(b"POST") else MODELS if b"/v1/models" in head else b""
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.parametrize(
    "params",
    [
        None,
        {**GOOD_PARAMS, "remote_host": "evil host; rm -rf"},
        {**GOOD_PARAMS, "remote_port": 70000},
        {**GOOD_PARAMS, "remote_port": "5600"},
        {k: v for k, v in GOOD_PARAMS.items() if k != "remote_request_id"},
        {**GOOD_PARAMS, "remote_block_ids": [1, "two"]},
        {**GOOD_PARAMS, "do_remote_prefill": False},
        {**GOOD_PARAMS, "extra": {"nested": ["x" * 10]}},
    ],
)
async def test_unusable_kv_transfer_params_from_the_prefill_never_reach_the_decode(sim, gateway, client, params):
    prefill = CannedPrefill(params)
    d = await sim(role="decode")
    try:
        gw = await gateway(_pool([await prefill.start()], [d.url], decode_local_fallback=False))
        r = await client.post(f"{gw.url}/v1/completions", json=BODY)
    finally:
        await prefill.close()
    assert r.status_code == 502
    assert "kv_transfer_params" in r.json()["error"]["message"]
    assert d.stats.requests_total == 0


async def test_unusable_kv_transfer_params_fall_back_to_a_plain_request_on_the_decode(sim, gateway, client):
    prefill = CannedPrefill({**GOOD_PARAMS, "remote_port": 70000})
    d = await sim(role="decode")
    try:
        gw = await gateway(_pool([await prefill.start()], [d.url]))
        r = await client.post(f"{gw.url}/v1/completions", json=BODY)
    finally:
        await prefill.close()
    assert r.status_code == 200, r.text
    assert "kv_transfer_params" not in d.stats.last_request_body and d.stats.kv_received == 0
    assert gw.gateway.telemetry.local == {("pd", "prefill_failed"): 1}


async def test_well_formed_kv_transfer_params_pass_as_the_prefill_sent_them(sim, gateway, client):
    params = {
        **GOOD_PARAMS,
        "remote_block_ids": [[1, 2], [3]],
        "remote_blocks_expiry_time": None,
        "transfer_mode": "pull",
    }
    prefill = CannedPrefill(params)
    d = await sim(role="decode")
    try:
        gw = await gateway(_pool([await prefill.start()], [d.url]))
        await client.post(f"{gw.url}/v1/completions", json=BODY)
    finally:
        await prefill.close()
    assert d.stats.last_request_body["kv_transfer_params"] == params


def _usage(text: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families["vllm:kv_cache_usage_perc"].samples[0].value


async def test_sim_prefill_counts_held_kv_in_its_usage_until_freed_or_expired(sim, client):
    p = await sim(role="prefill", block_size=4, prefix_cache_blocks=100, kv_hold_s=0.3)
    prefill = {**BODY, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}}
    for _ in range(2):
        assert (await client.post(f"{p.url}/v1/completions", json=prefill)).status_code == 200
    held = _usage((await client.get(f"{p.url}/metrics")).text)
    assert held == 0.06  # 2 leases x ceil(11 tokens / 4) blocks, of 100
    rid = next(iter(p.kv_by_id._entries))
    assert (await client.delete(f"{p.url}/sim/kv/{rid}")).status_code == 200  # a decode's notification
    assert _usage((await client.get(f"{p.url}/metrics")).text) == 0.03
    await wait_until(lambda: p.stats.kv_expired == 1)  # the other lease expires
    metrics = (await client.get(f"{p.url}/metrics")).text
    assert _usage(metrics) == 0.0
    assert "vllm:nixl_num_kv_expired_reqs_total" in metrics


async def test_lease_releases_are_bounded_in_number_and_time_and_end_with_the_gateway():
    cleanups = Cleanups(limit=2)

    async def stuck() -> None:
        await asyncio.sleep(60)

    assert cleanups.spawn("short", stuck, 0.05) and cleanups.spawn("long", stuck, 60)
    assert not cleanups.spawn("one too many", stuck, 60) and cleanups.dropped == 1
    await wait_until(lambda: len(cleanups) == 1)  # the short one's deadline fired
    owner = asyncio.create_task(cleanups.run())
    await asyncio.sleep(0)
    owner.cancel()  # the gateway stops
    await wait_until(lambda: len(cleanups) == 0)
