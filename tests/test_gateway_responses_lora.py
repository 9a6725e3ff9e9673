"""Stored responses fetched back from the worker that holds them; LoRA adapters routed only to
the workers that have them, and loaded through the gateway; model aliases and canary splits;
the non-generation routes of a prefill/decode pool."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import wait_until

ADMIN = {"authorization": "Bearer admin-secret"}


async def _replicas(sim, gateway, n=2, **sections):
    sims = [await sim(model="tiny") for _ in range(n)]
    gw = await gateway([{"name": "dp", "workers": [s.url for s in sims]}], **sections)
    return sims, gw


def _holder(sims, resp_id):
    return next(s for s in sims if resp_id in s.extra.responses.stored)


async def test_stored_response_is_fetched_from_the_worker_that_made_it(sim, gateway, client) -> None:
    sims, gw = await _replicas(sim, gateway)
    ids = []
    for i in range(6):
        body = {"model": "tiny", "input": f"question {i}", "stream": i % 2 == 0}
        resp = await client.post(f"{gw.url}/v1/responses", json=body)
        assert resp.status_code == 200
        ids.append(resp.json()["id"] if i % 2 else resp.text.split('"id":"', 2)[1].split('"')[0])
    assert {_holder(sims, i).url for i in ids} == {s.url for s in sims}  # both replicas hold some
    for resp_id in ids:
        assert gw.gateway.responses.home(resp_id) == _holder(sims, resp_id).url
        got = await client.get(f"{gw.url}/v1/responses/{resp_id}")
        assert got.status_code == 200 and got.json()["id"] == resp_id
        cancel = await client.post(f"{gw.url}/v1/responses/{resp_id}/cancel")
        assert cancel.status_code == 400  # the holder's own answer: a finished response cannot be cancelled


async def test_unknown_response_is_asked_of_every_worker(sim, gateway, client) -> None:
    sims, gw = await _replicas(sim, gateway)
    made = await client.post(f"{sims[1].url}/v1/responses", json={"model": "tiny", "input": "x"})
    resp_id = made.json()["id"]  # made behind the gateway's back: it has no home for it
    assert (await client.get(f"{gw.url}/v1/responses/{resp_id}")).json()["id"] == resp_id
    assert gw.gateway.responses.home(resp_id) == sims[1].url
    missing = await client.get(f"{gw.url}/v1/responses/resp_nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "response_id"


async def test_openai_client_responses_stream_and_retrieve(sim, gateway) -> None:
    import openai

    _, gw = await _replicas(sim, gateway)
    oai = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    stream = await oai.responses.create(model="tiny", input="hello there", stream=True)
    events = [e async for e in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    done = events[-1].response
    fetched = await oai.responses.retrieve(done.id)
    assert fetched.id == done.id and fetched.output_text == done.output_text


async def test_adapter_requests_go_only_to_workers_that_list_it(sim, gateway, client) -> None:
    sims, gw = await _replicas(sim, gateway, n=3)
    load = {"lora_name": "sql-lora", "lora_path": "/adapters/sql"}
    assert (await client.post(f"{sims[1].url}/v1/load_lora_adapter", json=load)).status_code == 200
    ep = gw.gateway.pools[0].endpoints[1]
    await wait_until(lambda: "sql-lora" in ep.model_ids, timeout_s=5)  # the health checks refresh it
    body = {"model": "sql-lora", "prompt": "select", "max_tokens": 2}
    for _ in range(6):
        assert (await client.post(f"{gw.url}/v1/completions", json=body)).status_code == 200
    assert [s.stats.requests_total for s in sims] == [0, 6, 0]
    gone = await client.post(f"{gw.url}/v1/completions", json={**body, "model": "other-lora"})
    assert gone.status_code == 404 and "other-lora" in gone.json()["error"]["message"]


async def test_loading_through_the_gateway_reaches_every_worker_at_once(sim, gateway, client) -> None:
    sims, gw = await _replicas(
        sim, gateway, health={"interval_s": 60, "timeout_s": 1}, auth={"admin_keys": ["admin-secret"]}
    )
    await wait_until(lambda: all(e.healthy for e in gw.gateway.endpoints))
    load = {"lora_name": "sql-lora", "lora_path": "/adapters/sql"}
    refused = await client.post(f"{gw.url}/v1/load_lora_adapter", json=load)
    assert refused.status_code == 401
    resp = await client.post(f"{gw.url}/v1/load_lora_adapter", json=load, headers=ADMIN)
    assert resp.status_code == 200 and "added successfully" in resp.text
    assert all("sql-lora" in s.extra.adapters for s in sims)
    models = (await client.get(f"{gw.url}/v1/models")).json()["data"]  # no health check since: updated at once
    assert {m["id"]: m["parent"] for m in models}["sql-lora"] == "tiny"
    again = await client.post(f"{gw.url}/v1/load_lora_adapter", json=load, headers=ADMIN)
    assert again.status_code == 400  # the workers' own answer, passed on
    unload = await client.post(f"{gw.url}/v1/unload_lora_adapter", json={"lora_name": "sql-lora"}, headers=ADMIN)
    assert unload.status_code == 200
    gone = await client.post(f"{gw.url}/v1/completions", json={"model": "sql-lora", "prompt": "x", "max_tokens": 1})
    assert gone.status_code == 404


async def test_alias_reaches_the_served_name(sim, gateway, client) -> None:
    s = await sim(model="tiny")
    gw = await gateway([{"name": "p", "workers": [s.url]}], aliases={"gpt-4o-mini": "tiny"})
    resp = await client.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert resp.status_code == 200 and s.stats.last_request_body["model"] == "tiny"
    files = {"file": ("a.wav", b"RIFF....WAVE", "audio/wav")}
    audio = await client.post(f"{gw.url}/v1/audio/transcriptions", data={"model": "gpt-4o-mini"}, files=files)
    assert audio.status_code == 200, audio.text  # the form's model field was rewritten too


async def test_split_sends_by_weight_and_keeps_a_session_on_one_side(sim, gateway, client) -> None:
    stable, canary = await sim(model="stable"), await sim(model="canary")
    split = {"split": [{"model": "stable", "weight": 90}, {"model": "canary", "weight": 10}]}
    pools = [{"name": "s", "workers": [stable.url]}, {"name": "c", "workers": [canary.url]}]
    gw = await gateway(pools, aliases={"chat": split})
    body = {"model": "chat", "prompt": "hi", "max_tokens": 1}
    for _ in range(200):
        assert (await client.post(f"{gw.url}/v1/completions", json=body)).status_code == 200
    assert 100 < stable.stats.requests_total < 200 and canary.stats.requests_total > 0
    sides = Counter()
    for session in range(20):
        seen = set()
        for _ in range(3):
            r = await client.post(f"{gw.url}/v1/completions", json=body, headers={"x-session-id": f"s{session}"})
            seen.add(r.json()["model"])
        assert len(seen) == 1
        sides[seen.pop()] += 1
    assert sides["stable"] > sides["canary"]


@pytest.mark.parametrize("protocol", ["nixl", "neuron-legacy"])
async def test_pd_pool_serves_other_routes_from_a_decode_endpoint(sim, gateway, client, protocol) -> None:
    kv = {"kv_protocol": protocol}
    p = await sim(role="prefill", **kv)
    d = await sim(role="decode", **kv, kv_peers=[p.url] if protocol == "neuron-legacy" else [])
    gw = await gateway([{"name": "pd", "kind": "pd", "protocol": protocol, "prefill": [p.url], "decode": [d.url]}])
    assert gw.gateway.pools[0].endpoints[1].url == d.url
    emb = await client.post(f"{gw.url}/v1/embeddings", json={"model": "sim-model", "input": "x"})
    assert emb.status_code == 200 and emb.json()["object"] == "list"
    tok = await client.post(f"{gw.url}/tokenize", json={"model": "sim-model", "prompt": "a b c"})
    assert tok.json()["count"] == 3
    assert p.stats.requests_total == 0


def test_response_homes_keep_only_the_newest() -> None:
    from gateway.response_homes import ResponseHomes

    homes = ResponseHomes(capacity=3)
    for i in range(5):
        homes.remember(f"resp_{i}", f"http://w{i}")
    homes.remember("resp_2", "http://w2")  # seen again: newest now
    homes.remember(None, "http://x")  # an answer without an id is not remembered
    assert len(homes) == 3 and homes.home("resp_0") is None and homes.home("resp_1") is None
    assert homes.home("resp_2") == "http://w2" and homes.home("resp_4") == "http://w4"


async def test_adapter_fan_out_says_which_workers_disagreed(sim, gateway, client) -> None:
    sims, gw = await _replicas(sim, gateway, auth={"admin_keys": ["admin-secret"]})
    await wait_until(lambda: all(e.healthy for e in gw.gateway.endpoints))
    load = {"lora_name": "sql-lora", "lora_path": "/adapters/sql"}
    await client.post(f"{sims[0].url}/v1/load_lora_adapter", json=load)  # already on one of them
    resp = await client.post(f"{gw.url}/v1/load_lora_adapter", json=load, headers=ADMIN)
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "partial_failure"
    assert sims[0].url in resp.json()["error"]["message"] and sims[1].url in resp.json()["error"]["message"]
    assert all("sql-lora" in s.extra.adapters for s in sims)  # the one that could, did
    unknown_pool = await client.post(f"{gw.url}/v1/load_lora_adapter?pool=nope", json=load, headers=ADMIN)
    assert unknown_pool.status_code == 404
