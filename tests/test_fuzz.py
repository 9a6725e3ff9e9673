"""10,000 fuzzed request bodies: never a 5xx from the gateway, never a leaked in-flight count."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.server import RunningGateway, start_gateway
from workers.sim import start_sim

scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "x"]) | values}, optional={"content": st.text(max_size=20) | values}
    ),
    max_size=3,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["sim-model", "other"]) | values,
        "prompt": st.text(max_size=30) | st.lists(st.text(max_size=5), max_size=3) | values,
        "messages": messages | values,
        "max_tokens": st.integers(-3, 40) | values,
        "max_completion_tokens": st.integers(-3, 40) | values,
        "n": st.integers(-1, 3) | values,
        "stream": st.booleans() | values,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | values}) | values,
        "temperature": values,
        "kv_transfer_params": values,
        "top_k": values,
    },
)


def _nested(depth: int) -> bytes:
    return b'{"model":"sim-model","prompt":"x","x":' + b"[" * depth + b"]" * depth + b"}"


def _with(field: str, value: bytes) -> bytes:
    return b'{"model":"sim-model","prompt":"a b","max_tokens":3,"%s":%s}' % (field.encode(), value)


# What an attacker sends rather than what a random generator finds: deep nesting, numbers past
# any integer type, long strings, lone surrogates, duplicate keys.
hostile = (
    st.integers(1, 5000).map(_nested)
    | st.tuples(
        st.sampled_from(["max_tokens", "n", "best_of", "temperature", "top_k", "seed"]),
        st.sampled_from([b"1" + b"0" * 400, b"-1e400", b"1e400", b"NaN", b"Infinity", b"-0", b"1.5"]),
    ).map(lambda fv: _with(*fv))
    | st.integers(1, 300_000).map(lambda n: _with("prompt", b'"' + b"a " * n + b'"'))
    | st.sampled_from([b'"\\ud800"', b'"a\\udfff"', b'"\\ud83d\\ude00"', b'["\\udc00"]']).map(
        lambda v: _with("prompt", v.replace(b"\\\\", b"\\"))
    )
    | st.just(b'{"model":"sim-model","model":"other","prompt":"a","prompt":[1,2],"max_tokens":2,"max_tokens":-1}')
)
payloads = bodies.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=64) | hostile


class Background:
    """A simulated worker and a gateway on their own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway: RunningGateway = self.call(self._start())

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> RunningGateway:
        self.sim = await start_sim({"max_model_len": 100_000})
        config = parse_config(
            {
                "listen": {"port": 0},
                "limits": {"max_tokens": 40, "max_n": 3},
                "pools": [{"name": "dp", "workers": [self.sim.url]}],
            }
        )
        return await start_gateway(config)

    async def _stop(self) -> None:
        await self.gateway.close()
        await self.sim.close()

    def close(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def background() -> Iterator[Background]:
    bg = Background()
    yield bg
    bg.close()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # Without TCP_NODELAY the client's separate header and body writes meet delayed ACKs: 40 ms each.
    nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(timeout=10, transport=nodelay) as c:
        yield c


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(raw=payloads)
def test_fuzzed_bodies_never_get_a_gateway_5xx(background: Background, http: httpx.Client, route: str, raw: bytes):
    resp = http.post(f"{background.gateway.url}/v1/{route}", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code < 500, (raw, resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        assert resp.json()["error"]["message"]
    elif resp.headers["content-type"].startswith("text/event-stream"):
        assert resp.content.endswith(b"data: [DONE]\n\n")


def test_nothing_leaked_after_the_fuzzing(background: Background, http: httpx.Client):
    gateway = background.gateway.gateway
    assert gateway.admission.inflight == 0
    assert all(e.outstanding == 0 and e.outstanding_tokens == 0 for e in gateway.endpoints)
    assert http.get(f"{background.gateway.url}/health").status_code == 200
