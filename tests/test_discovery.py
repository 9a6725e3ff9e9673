"""Kubernetes pod discovery against a fake API server speaking the real list/watch protocol
(tests/kubefake.py), with simulated workers and the gateway serving for real on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import PoolConfig
from gateway.discovery.members import Membership
from gateway.discovery.pods import Member
from gateway.pool import Pool
from tests.conftest import sse_payloads, stream_text, wait_until
from tests.kubefake import FakeKube

DP = {"pd-gateway/pool": "dp", "pd-gateway/role": "replica", "app.kubernetes.io/part-of": "pd-gateway"}


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube(namespace="serving")
    await fake.start()
    yield fake
    await fake.close()


def _discovered(kube: FakeKube, tmp_path: Path, name: str = "dp", **extra: object) -> dict:
    discovery = {
        "kind": "kubernetes",
        "kubeconfig": str(kube.kubeconfig(tmp_path / "kubeconfig")),
        "selector": {"app.kubernetes.io/part-of": "pd-gateway"},
        "backoff_s": 0.05,
    }
    return {"name": name, "kind": "replicas", "models": ["sim-model"], "discovery": discovery, **extra}


def _group(gw, pool: str = "dp", role: str = "replica"):
    return next(p for p in gw.gateway.pools if p.name == pool).groups[role]


def _healthy_urls(gw, pool: str = "dp", role: str = "replica") -> set[str]:
    return {e.url for e in _group(gw, pool, role) if e.healthy and not e.draining}


async def _complete(client, gw) -> int:
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}
    return (await client.post(f"{gw.url}/v1/completions", json=body)).status_code


async def test_pods_join_when_ready_and_leave_when_deleted_or_not_ready(kube, sim, gateway, client, tmp_path):
    a, b = await sim(), await sim()
    kube.add("dp-0", a.port, DP)  # scheduled, not Ready yet
    kube.add("stranger", b.port, {**DP, "app.kubernetes.io/part-of": "other"}, ready=True)  # not selected
    gw = await gateway([_discovered(kube, tmp_path)])
    await wait_until(lambda: kube.watches)
    assert kube.lists == 1 and _group(gw) == []
    assert (await client.get(f"{gw.url}/ready")).json()["pools"]["dp"] is False
    assert await _complete(client, gw) == 503

    assert 'pd_gateway_pool_ready{pool="dp"} 0.0' in (await client.get(f"{gw.url}/metrics")).text
    kube.set_ready("dp-0", True)
    await wait_until(lambda: _healthy_urls(gw) == {a.url})
    assert await _complete(client, gw) == 200
    assert 'pd_gateway_pool_ready{pool="dp"} 1.0' in (await client.get(f"{gw.url}/metrics")).text
    kube.add("dp-1", b.port, DP, ready=True)
    await wait_until(lambda: _healthy_urls(gw) == {a.url, b.url})

    kube.set_ready("dp-1", False)  # readiness probe failing: out, though the process still answers
    await wait_until(lambda: [e.url for e in _group(gw)] == [a.url])
    kube.delete("dp-0")
    await wait_until(lambda: _group(gw) == [])
    assert await _complete(client, gw) == 503
    assert {q["labelSelector"] for q in kube.watch_requests} == {
        "app.kubernetes.io/part-of=pd-gateway,pd-gateway/pool=dp"
    }


async def test_ready_pod_failing_the_gateways_health_check_gets_no_traffic(kube, sim, gateway, client, tmp_path):
    a = await sim()
    kube.add("dp-0", a.port, DP, ready=True)
    kube.add("dp-1", 1, DP, ready=True)  # Ready to Kubernetes, but nothing listens on port 1
    gw = await gateway([_discovered(kube, tmp_path)])
    await wait_until(lambda: len(_group(gw)) == 2 and _healthy_urls(gw) == {a.url})
    for _ in range(4):
        assert await _complete(client, gw) == 200
    assert next(e for e in _group(gw) if e.url.endswith(":1")).healthy is False


async def test_stream_in_flight_on_a_deleted_pod_completes(kube, sim, gateway, client, tmp_path):
    slow = await sim(itl_ms=20)
    kube.add("dp-0", slow.port, DP, ready=True)
    gw = await gateway([_discovered(kube, tmp_path)])
    await wait_until(lambda: _healthy_urls(gw) == {slow.url})
    body = {"model": "sim-model", "prompt": "a long answer", "max_tokens": 40, "stream": True}
    async with client.stream("POST", f"{gw.url}/v1/completions", json=body) as resp:
        chunks = resp.aiter_bytes()
        received = [await anext(chunks)]
        kube.delete("dp-0")
        await wait_until(lambda: _group(gw)[0].draining)
        endpoint = _group(gw)[0]
        assert endpoint.outstanding == 1
        assert await _complete(client, gw) == 503  # no new request goes to the leaving pod
        received += [c async for c in chunks]
    payloads = sse_payloads(b"".join(received))
    assert len(stream_text(payloads)) > 0 and payloads[-1] == "[DONE]"
    assert sum(1 for p in payloads if isinstance(p, dict) and p["choices"] and p["choices"][0]["text"]) >= 30
    await wait_until(lambda: _group(gw) == [])  # left once its last request finished


async def test_expired_watch_lists_afresh_and_keeps_known_endpoints(kube, sim, gateway, client, tmp_path):
    a, b = await sim(), await sim()
    kube.add("dp-0", a.port, DP, ready=True)
    gw = await gateway([_discovered(kube, tmp_path)])
    await wait_until(lambda: _healthy_urls(gw) == {a.url})
    kept = _group(gw)[0]
    # The watch ends (server timeout); before the client resumes, history is compacted, and a
    # pod became Ready that no watch saw: resuming gets 410 Gone, and only a fresh list finds dp-1.
    kube.end_watches()
    kube.add("dp-1", b.port, DP, ready=True)
    kube.compact()
    await wait_until(lambda: _healthy_urls(gw) == {a.url, b.url})
    assert kube.lists == 2
    assert _group(gw)[0] is kept and not kept.draining and kept.healthy  # never dropped or re-made
    assert await _complete(client, gw) == 200


async def test_cut_watch_is_resumed_after_backoff_and_bookmarks_move_the_version(kube, sim, gateway, tmp_path):
    a = await sim()
    kube.add("dp-0", a.port, DP, ready=True)
    gw = await gateway([_discovered(kube, tmp_path)])
    await wait_until(lambda: _healthy_urls(gw) == {a.url})
    kept = _group(gw)[0]

    mark = kube.bookmark()
    kube.end_watches()  # a clean end: lightkube resumes from the bookmark's version, no new list
    await wait_until(lambda: len(kube.watch_requests) == 2)
    assert kube.watch_requests[-1]["resourceVersion"] == str(mark) and kube.lists == 1

    await wait_until(lambda: kube.watches)
    kube.cut_watches()  # the connection drops mid-stream: a fresh list, then a watch
    await wait_until(lambda: kube.lists == 2 and len(kube.watch_requests) == 3)
    assert _group(gw) == [kept] and kept.healthy


async def test_pd_pool_members_by_role_label(kube, sim, gateway, client, tmp_path):
    p = await sim(role="prefill", kv_protocol="nixl")
    d = await sim(role="decode", kv_protocol="nixl")
    kube.add("pd-prefill-0", p.port, {"pd-gateway/pool": "pd", "pd-gateway/role": "prefill"}, ready=True)
    kube.add("pd-decode-0", d.port, {"pd-gateway/pool": "pd", "pd-gateway/role": "decode"}, ready=True)
    pool = _discovered(kube, tmp_path, name="pd", kind="pd", protocol="nixl")
    pool["discovery"]["selector"] = {}
    gw = await gateway([pool])
    await wait_until(
        lambda: _healthy_urls(gw, "pd", "prefill") == {p.url} and _healthy_urls(gw, "pd", "decode") == {d.url}
    )
    body = {"model": "sim-model", "prompt": "disaggregated", "max_tokens": 5}
    resp = await client.post(f"{gw.url}/v1/completions", json=body)
    assert resp.status_code == 200, resp.text


# --- the pure parts ---------------------------------------------------------------------


def test_set_members_adds_unhealthy_and_drains_before_removing() -> None:
    pool = Pool(PoolConfig(name="dp", discovery="kubernetes"))
    added = pool.set_members("replica", ["http://a:1", "http://b:1"])
    assert [e.url for e in added] == ["http://a:1", "http://b:1"] and not any(e.healthy for e in added)
    a, b = added
    a.acquire()
    assert pool.set_members("replica", ["http://b:1"]) == []
    assert pool.groups["replica"] == [a, b] and a.draining  # busy: stays until released
    a.release()
    assert pool.groups["replica"] == [b]
    pool.set_members("replica", [])
    assert pool.groups["replica"] == []  # idle: leaves at once


def test_set_members_revives_a_draining_endpoint_that_comes_back() -> None:
    pool = Pool(PoolConfig(name="dp", discovery="kubernetes"))
    (a,) = pool.set_members("replica", ["http://a:1"])
    a.acquire()
    pool.set_members("replica", [])
    assert a.draining
    assert pool.set_members("replica", ["http://a:1"]) == []
    assert not a.draining and a.leaving is None
    a.release()
    assert pool.groups["replica"] == [a]


def test_membership_publishes_only_changes_and_ignores_unknown_roles() -> None:
    seen: list[tuple[str, list[str]]] = []
    m = Membership("pd", ["prefill", "decode"], lambda role, urls: seen.append((role, urls)))
    m.replace([Member("p0", "prefill", "http://p0:1"), Member("d0", "decode", None), Member("r", "replica", "x")])
    assert seen == [("prefill", ["http://p0:1"]), ("decode", [])]
    m.update(Member("p0", "prefill", "http://p0:1"))
    assert len(seen) == 2
    m.update(Member("d0", "decode", "http://d0:1"))
    m.remove("p0")
    assert seen[2:] == [("decode", ["http://d0:1"]), ("prefill", [])]
