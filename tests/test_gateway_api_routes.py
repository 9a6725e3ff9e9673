"""The vLLM routes besides completions and chat, through the gateway: each routed by its
model to the pool serving it, answered as the worker answers; unknown paths and methods get
the OpenAI envelope; /v1/models merges the workers' entries."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from gateway.routes import TABLE
from tests.conftest import sse_payloads
from tests.parity_api_cases import CASES, api_shape, ask_async

JSON_CASES = [c for c in CASES if c.case.path not in ("/v1/completions",) and "unknown" not in c.name]


@pytest.mark.parametrize("case", JSON_CASES, ids=[c.name for c in JSON_CASES])
async def test_route_through_gateway_answers_as_the_worker(sim, gateway, client, case) -> None:
    s = await sim(model="tiny", max_model_len=512)
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    direct = await ask_async(client, s.url, case.case)
    via = await ask_async(client, gw.url, case.case)
    assert via["status"] == direct["status"] == 200
    assert api_shape(via, case.case) == api_shape(direct, case.case)


async def test_routes_go_to_the_pool_serving_the_model(sim, gateway, client) -> None:
    a, b = await sim(model="model-a"), await sim(model="model-b")
    gw = await gateway([{"name": "a", "workers": [a.url]}, {"name": "b", "workers": [b.url]}])
    for model in ("model-a", "model-b", "model-a"):
        for path, body in (
            ("/v1/embeddings", {"input": "hi"}),
            ("/tokenize", {"prompt": "hi"}),
            ("/classify", {"input": "x"}),
        ):
            resp = await client.post(gw.url + path, json={"model": model, **body})
            assert resp.status_code == 200, resp.text  # the other pool's worker would answer 404
            assert resp.json().get("model", model) == model


async def test_unknown_model_on_a_new_route_is_an_openai_404(sim, gateway, client) -> None:
    s = await sim()
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    resp = await client.post(f"{gw.url}/v1/embeddings", json={"model": "nope", "input": "x"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found" and "nope" in resp.json()["error"]["message"]


async def test_unknown_paths_and_methods_get_the_envelope(sim, gateway, client) -> None:
    s = await sim()
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    missing = await client.post(f"{gw.url}/v1/nothing", json={})
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    for spec in TABLE:
        if spec.method == "POST" and "{" not in spec.path:
            wrong = await client.get(gw.url + spec.path)
            assert wrong.status_code == 405, spec.path
            assert wrong.json()["error"]["type"] and wrong.headers["allow"] == "POST"


async def test_no_model_goes_to_the_only_pool(sim, gateway, client) -> None:
    s = await sim()
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    resp = await client.post(f"{gw.url}/tokenize", json={"prompt": "hello world"})
    assert resp.status_code == 200 and resp.json()["count"] == 2


async def test_version_is_the_workers(sim, gateway, client) -> None:
    s = await sim()
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    assert (await client.get(f"{gw.url}/version")).json() == (await client.get(f"{s.url}/version")).json()


async def test_new_routes_count_in_telemetry_by_route(sim, gateway, client) -> None:
    s = await sim()
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    await client.post(f"{gw.url}/v1/embeddings", json={"model": "sim-model", "input": "x"})
    await client.post(f"{gw.url}/v1/responses", json={"model": "sim-model", "input": "x", "stream": True})
    metrics = (await client.get(f"{gw.url}/metrics")).text.splitlines()
    counted = [line for line in metrics if line.startswith("pd_gateway_requests_total{")]
    for route in ("embeddings", "responses"):
        assert any(f'route="{route}"' in line and 'outcome="success"' in line for line in counted), route


class StrictModel(BaseModel):
    """The OpenAI schema's Model, every field required."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    created: int
    owned_by: str


async def test_models_list_merges_worker_entries_and_makes_complete_ones(sim, gateway, client) -> None:
    import openai

    s = await sim(model="tiny", max_model_len=512)
    await client.post(f"{s.url}/v1/load_lora_adapter", json={"lora_name": "tiny-lora", "lora_path": "/a"})
    pools = [{"name": "p", "workers": [s.url]}, {"name": "q", "models": ["later"], "workers": ["http://127.0.0.1:9"]}]
    gw = await gateway(pools, aliases={"public": "tiny"})
    oai = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    cards = {m.id: StrictModel.model_validate(m.model_dump()) for m in (await oai.models.list()).data}
    assert set(cards) == {"tiny", "tiny-lora", "later", "public"}
    worker = (await client.get(f"{s.url}/v1/models")).json()["data"]
    raw = {m["id"]: m for m in (await client.get(f"{gw.url}/v1/models")).json()["data"]}
    assert raw["tiny"] == worker[0]  # every field the worker gives, as it gives it
    assert raw["tiny-lora"]["parent"] == "tiny"
    assert cards["later"].owned_by == "pd-gateway" and cards["later"].created > 0
    assert raw["public"]["max_model_len"] == 512 and raw["public"]["root"] == raw["tiny"]["root"]


async def test_openai_client_embeddings(sim, gateway) -> None:
    import openai

    s = await sim(model="tiny")
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    oai = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    got = await oai.embeddings.create(model="tiny", input=["a b", "c"])
    assert [d.index for d in got.data] == [0, 1] and len(got.data[0].embedding) == 128
    assert got.usage.prompt_tokens == 3


async def test_form_route_is_routed_by_its_model_field(sim, gateway, client) -> None:
    a, b = await sim(model="whisper-a"), await sim(model="whisper-b")
    gw = await gateway([{"name": "a", "workers": [a.url]}, {"name": "b", "workers": [b.url]}])
    for model in ("whisper-b", "whisper-a"):
        files = {"file": ("a.wav", b"RIFF....WAVE", "audio/wav")}
        resp = await client.post(f"{gw.url}/v1/audio/transcriptions", data={"model": model}, files=files)
        assert resp.status_code == 200, resp.text
        assert isinstance(resp.json()["text"], str)
    resp = await client.post(f"{gw.url}/v1/audio/translations", data={"language": "fr"}, files=files)
    assert resp.status_code == 404  # no model field, two pools: nowhere to send it


async def test_form_route_refuses_a_json_body(sim, gateway, client) -> None:
    s = await sim()
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    resp = await client.post(f"{gw.url}/v1/audio/transcriptions", json={"model": "sim-model"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_content_type"


async def test_form_route_passes_a_text_answer_as_it_is(sim, gateway, client) -> None:
    s = await sim()
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    files = {"file": ("a.wav", b"RIFF....WAVE", "audio/wav")}
    form = {"model": "sim-model", "response_format": "text"}
    direct = await client.post(f"{s.url}/v1/audio/transcriptions", data=form, files=files)
    via = await client.post(f"{gw.url}/v1/audio/transcriptions", data=form, files=files)
    assert via.status_code == 200 and via.headers["content-type"].startswith("text/plain")
    assert via.text == direct.text


async def test_form_route_stream_is_relayed(sim, gateway, client) -> None:
    s = await sim()
    gw = await gateway([{"name": "p", "workers": [s.url]}])
    files = {"file": ("a.wav", b"RIFF....WAVE", "audio/wav")}
    form = {"model": "sim-model", "stream": "true"}
    resp = await client.post(f"{gw.url}/v1/audio/transcriptions", data=form, files=files)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_payloads(resp.content)
    assert events[-1] == "[DONE]" and all(e["object"] == "transcription.chunk" for e in events[:-1])
