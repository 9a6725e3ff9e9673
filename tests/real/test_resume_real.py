"""Mid-stream resume on real vLLM CPU: a 1P2D NixlConnector pool whose decode is killed (SIGKILL)
in the middle of 20 concurrent streams; every stream completes, with no error event, and its text
is the uninterrupted greedy output (continued from token ids on the other decode)."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from tests.conftest import sse_payloads, stream_text, wait_until
from tests.real.conftest import VllmServer, _nixl_config, distinct_ports, start_servers, stop_servers

MODEL = "tiny"
STREAMS = 20
MAX_TOKENS = 160
WORDS = "the old man watches the long road at night and the river follows a small bird".split()


@pytest.fixture(scope="module")
def one_p_two_d(vllm_nixl, vllm_stack, vllm_logs):
    ports = distinct_ports(6)
    made = [
        VllmServer(
            name,
            ports[i],
            vllm_logs / f"resume-{name}.log",
            extra_args=["--kv-transfer-config", _nixl_config(role)],
            extra_env={"VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1", "VLLM_NIXL_SIDE_CHANNEL_PORT": str(ports[3 + i])},
        )
        for i, (name, role) in enumerate(
            (("prefill", "kv_producer"), ("decode-a", "kv_consumer"), ("decode-b", "kv_consumer"))
        )
    ]
    start_servers(made)
    yield made
    stop_servers(made)


def _prompt(i: int) -> str:
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) + f" {i}"


async def test_killing_a_decode_mid_stream_loses_no_stream_and_no_text(one_p_two_d, real_gateway):
    prefill, a, b = one_p_two_d
    pool = {"name": "pd", "kind": "pd", "protocol": "nixl", "prefill": [prefill.url], "decode": [a.url, b.url]}
    gw = await real_gateway(
        [{**pool, "resume_attempts": 2, "disaggregate_min_tokens": 0}],
        timeouts={"first_byte_s": 120, "between_chunks_s": 30},
    )
    bodies = [
        {"model": MODEL, "prompt": _prompt(i), "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
        for i in range(STREAMS)
    ]
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as c:
        want = []
        for body in bodies:  # the uninterrupted greedy output, one at a time
            resp = await c.post(f"{gw.url}/v1/completions", json=body)
            want.append(stream_text(sse_payloads(resp.content)))
        assert all(len(w) > 0 for w in want)
        started = [asyncio.Event() for _ in bodies]

        async def one(i: int) -> bytes:
            chunks = []
            async with c.stream("POST", f"{gw.url}/v1/completions", json=bodies[i]) as resp:
                assert resp.status_code == 200
                async for piece in resp.aiter_bytes():
                    chunks.append(piece)
                    if b'"text":"' in piece:
                        started[i].set()
            return b"".join(chunks)

        tasks = [asyncio.create_task(one(i)) for i in range(STREAMS)]
        a_ep = gw.gateway.pools[0].groups["decode"][0]
        # kill as soon as A holds streams that have begun: on a quiet machine they do not last long
        await wait_until(lambda: any(e.is_set() for e in started) and a_ep.outstanding >= 2, timeout_s=120)
        on_a = a_ep.outstanding
        assert a.handle is not None
        os.killpg(a.handle.pgid, signal.SIGKILL)  # kill -9, mid-stream
        results = await asyncio.gather(*tasks)
    got = [sse_payloads(r) for r in results]
    errors = [p for r in got for p in r if isinstance(p, dict) and "error" in p]
    resumed = gw.gateway.telemetry.resumed.get(("pd", "resumed"), 0)
    print(f"\n{STREAMS} streams, {on_a} on the killed decode when it died; resumed {resumed}, errors {len(errors)}")
    same = sum(stream_text(g) == w for g, w in zip(got, want, strict=True))
    print(f"identical to the uninterrupted greedy output: {same} of {STREAMS}")
    assert errors == []
    assert on_a > 0 and resumed >= 1
    assert same == STREAMS


CHAT_STREAMS = 10


async def test_killing_a_decode_mid_chat_stream_continues_the_assistant_message(one_p_two_d, real_gateway):
    """Chat streams are continued from their partial assistant message (continue_final_message,
    from text): every stream completes with no error event; how many equal the uninterrupted
    output depends on the text re-tokenizing to the same tokens (printed)."""
    prefill, a, b = one_p_two_d
    if a.handle is None or not a.handle.alive():
        await a.restart()  # the decode the test before killed
    pool = {"name": "pd", "kind": "pd", "protocol": "nixl", "prefill": [prefill.url], "decode": [b.url, a.url]}
    gw = await real_gateway(
        [{**pool, "resume_attempts": 2, "disaggregate_min_tokens": 0}],
        timeouts={"first_byte_s": 120, "between_chunks_s": 30},
    )
    await wait_until(lambda: all(e.healthy for e in gw.gateway.pools[0].endpoints), timeout_s=30)
    bodies = [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": _prompt(i)}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": True,
        }
        for i in range(CHAT_STREAMS)
    ]
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as c:
        want = [
            stream_text(sse_payloads((await c.post(f"{gw.url}/v1/chat/completions", json=x)).content)) for x in bodies
        ]
        started = [asyncio.Event() for _ in bodies]

        async def one(i: int) -> bytes:
            chunks = []
            async with c.stream("POST", f"{gw.url}/v1/chat/completions", json=bodies[i]) as resp:
                assert resp.status_code == 200
                async for piece in resp.aiter_bytes():
                    chunks.append(piece)
                    if b'"content":"' in piece and b'"role"' not in piece:
                        started[i].set()
            return b"".join(chunks)

        tasks = [asyncio.create_task(one(i)) for i in range(CHAT_STREAMS)]
        b_ep = gw.gateway.pools[0].groups["decode"][0]
        await wait_until(lambda: any(e.is_set() for e in started) and b_ep.outstanding >= 2, timeout_s=120)
        on_b = b_ep.outstanding
        assert b.handle is not None
        os.killpg(b.handle.pgid, signal.SIGKILL)
        results = await asyncio.gather(*tasks)
    got = [sse_payloads(r) for r in results]
    errors = [p for r in got for p in r if isinstance(p, dict) and "error" in p]
    resumed = gw.gateway.telemetry.resumed.get(("pd", "resumed"), 0)
    same = sum(stream_text(g) == w for g, w in zip(got, want, strict=True))
    roles = [sum(1 for p in g if isinstance(p, dict) for ch in p["choices"] if "role" in ch["delta"]) for g in got]
    print(f"\nchat: {CHAT_STREAMS} streams, {on_b} on the killed decode; resumed {resumed}, errors {len(errors)}")
    print(f"chat: identical to the uninterrupted greedy output: {same} of {CHAT_STREAMS}")
    assert errors == [] and on_b > 0 and resumed >= 1
    assert roles == [1] * CHAT_STREAMS and all(g[-1] == "[DONE]" for g in got)
