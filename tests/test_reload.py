"""Changes without a restart: a reloaded config (admin route, SIGHUP) and endpoints added or
removed at run time, while streams in flight finish on what they started with."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config import ConfigError
from tests.conftest import FAST_HEALTH, sse_payloads, wait_until

ROOT = Path(__file__).resolve().parents[1]
ADMIN = {"authorization": "Bearer adm"}
STREAM = {"model": "sim-model", "prompt": "hello", "max_tokens": 12, "stream": True}


def _config(workers: list[str], key: str, **extra: object) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "health": FAST_HEALTH,
        "auth": {"api_keys": [key], "admin_keys": ["adm"]},
        "pools": [{"name": "dp", "workers": workers}],
        **extra,
    }


async def _start(gateway, workers: list[str], key: str):
    config = _config(workers, key)
    return await gateway(config["pools"], health=FAST_HEALTH, auth=config["auth"])


async def _reload(client: httpx.AsyncClient, gw, config: dict) -> httpx.Response:
    config = {"listen": {"host": "127.0.0.1", "port": 0}, **config}
    return await client.post(f"{gw.url}/admin/config/reload", json=config, headers=ADMIN)


async def test_reload_with_100_streams_in_flight(sim, gateway):
    old, new = await sim(itl_ms=50), await sim()
    gw = await _start(gateway, [old.url], "k1")
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def stream() -> bytes:
            r = await client.post(f"{gw.url}/v1/completions", json=STREAM, headers={"authorization": "Bearer k1"})
            assert r.status_code == 200, r.text
            return r.content

        streams = [asyncio.create_task(stream()) for _ in range(100)]
        await wait_until(lambda: old.stats.in_flight == 100, timeout_s=10)
        r = await _reload(client, gw, _config([new.url], "k2"))
        assert r.status_code == 200, r.text
        assert r.json()["in_flight"] == 100  # swapped under all 100 streams
        # new requests: the new key, the new pool's endpoint
        refused = await client.post(f"{gw.url}/v1/completions", json=STREAM, headers={"authorization": "Bearer k1"})
        assert refused.status_code == 401
        await wait_until(lambda: any(e.url == new.url and e.healthy for e in gw.gateway.endpoints))
        body = {**STREAM, "stream": False}
        r = await client.post(f"{gw.url}/v1/completions", json=body, headers={"authorization": "Bearer k2"})
        assert r.status_code == 200 and new.stats.requests_total == 1
        bodies = await asyncio.gather(*streams)
        assert len(bodies) == 100
        for raw in bodies:
            payloads = sse_payloads(raw)
            tokens = [p for p in payloads if isinstance(p, dict) and p["choices"] and p["choices"][0]["text"]]
            assert len(tokens) == STREAM["max_tokens"] and payloads[-1] == "[DONE]"
        assert old.stats.completed == 100 and old.stats.requests_total == 100
        assert gw.gateway.admission.inflight == 0


async def test_an_invalid_config_changes_nothing(sim, gateway, client):
    a = await sim()
    gw = await _start(gateway, [a.url], "k1")
    bad = _config(["ftp://nowhere"], "k2")
    r = await _reload(client, gw, bad)
    assert r.status_code == 400
    error = r.json()["error"]
    assert "pools.0.workers" in error["message"] and error["code"] == "invalid_config"
    r = await _reload(client, gw, {**_config([a.url], "k2"), "listen": {"host": "127.0.0.1", "port": 1}})
    assert r.status_code == 400 and "config field 'listen'" in r.json()["error"]["message"]
    r = await _reload(client, gw, {**_config([a.url], "k2"), "limits": {"max_inflight": 0}})
    assert r.status_code == 400 and "limits.max_inflight" in r.json()["error"]["message"]
    assert gw.gateway.reloader.generation == 0
    r = await client.post(f"{gw.url}/v1/completions", json=STREAM, headers={"authorization": "Bearer k1"})
    assert r.status_code == 200  # still the old key, the old pool
    r = await client.post(f"{gw.url}/admin/config/reload", content=b"{}", headers=ADMIN)
    assert r.status_code == 400 and "pools" in r.json()["error"]["message"]
    r = await client.post(f"{gw.url}/admin/config/reload", json=_config([a.url], "k2"))
    assert r.status_code == 401  # an admin key is needed


async def test_endpoints_added_and_removed_at_run_time(sim, gateway, client):
    a, b = await sim(itl_ms=20), await sim()
    gw = await _start(gateway, [a.url], "k1")
    key = {"authorization": "Bearer k1"}
    add = {"pool": "dp", "role": "replica", "url": b.url}
    r = await client.post(f"{gw.url}/admin/endpoints/add", json=add, headers=ADMIN)
    assert r.status_code == 200 and r.json()["new_endpoints"] == [b.url]
    pool = gw.gateway.pools[0]
    await wait_until(lambda: all(e.healthy for e in pool.endpoints) and len(pool.endpoints) == 2)
    # a stream in flight on `a` while `a` is removed: it finishes there, then `a` leaves
    on_a = asyncio.create_task(client.post(f"{gw.url}/v1/completions", json=STREAM, headers=key))
    await wait_until(lambda: a.stats.in_flight == 1)
    r = await client.post(f"{gw.url}/admin/endpoints/remove", json={**add, "url": a.url}, headers=ADMIN)
    assert r.status_code == 200
    assert [e.url for e in pool.endpoints if not e.draining] == [b.url]
    for _ in range(3):
        r = await client.post(f"{gw.url}/v1/completions", json={**STREAM, "stream": False}, headers=key)
        assert r.status_code == 200
    assert b.stats.requests_total == 3 and a.stats.requests_total == 1
    done = await on_a
    assert done.status_code == 200 and sse_payloads(done.content)[-1] == "[DONE]"
    await wait_until(lambda: [e.url for e in pool.endpoints] == [b.url])
    # the last endpoint of a pool cannot go: the config would be invalid
    r = await client.post(f"{gw.url}/admin/endpoints/remove", json=add, headers=ADMIN)
    assert r.status_code == 400 and "pools.0" in r.json()["error"]["message"]
    r = await client.post(f"{gw.url}/admin/endpoints/add", json={**add, "role": "decode"}, headers=ADMIN)
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sighup_reads_the_file_again(sim, client, tmp_path):
    a, b = await sim(), await sim()
    port = _free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**_config([a.url], "k1"), "listen": {"host": "127.0.0.1", "port": port}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdcli", "serve", "--config", str(path)], env=env, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _poll(client, f"{url}/ready", 200)
        path.write_text(yaml.safe_dump({**_config([b.url], "k2"), "listen": {"host": "127.0.0.1", "port": port}}))
        proc.send_signal(signal.SIGHUP)
        key = {"authorization": "Bearer k2"}
        await _poll(client, f"{url}/v1/completions", 200, json={**STREAM, "stream": False}, headers=key)
        assert b.stats.requests_total >= 1 and a.stats.requests_total == 0
        path.write_text("pools: [{name: dp, workers: []}]\n")
        proc.send_signal(signal.SIGHUP)
        r = None
        for _ in range(50):  # the refusal is logged; meanwhile the old config keeps serving
            r = await client.post(f"{url}/v1/completions", json={**STREAM, "stream": False}, headers=key)
            assert r.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "config reload refused" in err and "pools.0" in err


async def _poll(client: httpx.AsyncClient, url: str, status: int, **post: object) -> None:
    for _ in range(400):
        try:
            r = await (client.post(url, **post) if post else client.get(url))  # type: ignore[arg-type]
            if r.status_code == status:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail(f"{url} never answered {status}")


async def test_a_changed_pool_is_rebuilt_with_its_endpoints_state_and_a_removed_one_finishes(sim, gateway, client):
    a, b, c = await sim(model="m1"), await sim(model="m1"), await sim(model="m2", itl_ms=20)
    gw = await gateway(
        [
            {"name": "one", "models": ["m1"], "workers": [a.url, b.url]},
            {"name": "two", "models": ["m2"], "workers": [c.url]},
        ],
        health=FAST_HEALTH,
        auth={"admin_keys": ["adm"]},
    )
    old_one = gw.gateway.pools[0]
    on_two = asyncio.create_task(client.post(f"{gw.url}/v1/completions", json={**STREAM, "model": "m2"}))
    await wait_until(lambda: c.stats.in_flight == 1)
    config = {
        "health": FAST_HEALTH,
        "auth": {"admin_keys": ["adm"]},
        "pools": [{"name": "one", "models": ["m1"], "workers": [a.url, b.url], "policy": "prefix_aware"}],
    }
    r = await _reload(client, gw, config)
    assert r.status_code == 200 and r.json()["removed_pools"] == ["two"] and r.json()["new_endpoints"] == []
    one = gw.gateway.pools[0]
    assert (
        one is not old_one
        and one.policies["replica"].__class__.__name__ != old_one.policies["replica"].__class__.__name__
    )
    assert [id(e) for e in one.endpoints] == [id(e) for e in old_one.endpoints]  # health and load carried over
    r = await client.post(f"{gw.url}/v1/completions", json={**STREAM, "model": "m1", "stream": False})
    assert r.status_code == 200  # served at once: no health check to wait for
    r = await client.post(f"{gw.url}/v1/completions", json={**STREAM, "model": "m2", "stream": False})
    assert r.status_code == 404
    done = await on_two
    assert done.status_code == 200 and sse_payloads(done.content)[-1] == "[DONE]"


async def test_pools_found_by_discovery_change_only_with_a_restart(sim, gateway):
    a = await sim()
    gw = await _start(gateway, [a.url], "k1")
    base = {**_config([a.url], "k1"), "listen": {"host": "127.0.0.1", "port": 0}}
    found = {"name": "k8s", "kind": "pd", "protocol": "nixl", "discovery": "kubernetes"}
    with pytest.raises(ConfigError, match=r"'pools.1.discovery'.*restart"):
        gw.gateway.reloader.apply_data({**base, "pools": [*base["pools"], found]})
    assert [p.name for p in gw.gateway.pools] == ["dp"] and gw.gateway.reloader.generation == 0
