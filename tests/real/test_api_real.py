"""The whole vLLM API through the gateway, against real vLLM CPU servers of the tiny Llama:
two generating replicas with a LoRA adapter (scripts/make_tiny_lora.py), runtime adapter
loading and stored responses on, and one embedding server (`--runner pooling --convert embed`).

Each route answers through the gateway in the shape it answers straight from the worker; a
stored response comes back by id through the gateway from whichever replica made it; the
official openai client validates what it gets; `vllm bench serve` aligns its prompts through
the gateway's /tokenize instead of skipping it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict

from tests.parity_api_cases import ADAPTER, CASES, ApiCase, api_shape, ask_async
from tests.real.conftest import MODEL_DIR, MODEL_NAME, PYTHON, VllmServer, distinct_ports, start_servers, stop_servers

ROOT = Path(__file__).resolve().parents[2]
LORA_DIR = ROOT / ".models" / "tiny-lora"
ADMIN_KEY = "admin-secret"
# `vllm bench serve` without the `vllm` entry point (which needs the package's metadata).
BENCH_SERVE = (
    "import sys; from vllm.benchmarks.serve import add_cli_args, main; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
    "p = P(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


@pytest.fixture(scope="module")
def lora_replicas(vllm_stack, vllm_logs: Path):
    if not (LORA_DIR / "adapter_config.json").exists():
        subprocess.run([PYTHON, str(ROOT / "scripts" / "make_tiny_lora.py"), str(MODEL_DIR), str(LORA_DIR)], check=True)
    args = ["--enable-lora", "--max-lora-rank", "8", "--lora-modules", f"{ADAPTER}={LORA_DIR}"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_ENABLE_RESPONSES_API_STORE": "1"}
    servers = [
        VllmServer(f"lora-{i}", port, vllm_logs / f"lora-{i}.log", extra_args=args, extra_env=env)
        for i, port in enumerate(distinct_ports(2))
    ]
    start_servers(servers)
    yield servers
    stop_servers(servers)


@pytest.fixture(scope="module")
def embed_server(vllm_stack, vllm_logs: Path):
    (port,) = distinct_ports(1)
    server = VllmServer(
        "embed", port, vllm_logs / "embed.log", extra_args=["--runner", "pooling", "--convert", "embed"]
    )
    start_servers([server])
    yield server
    stop_servers([server])


@pytest.fixture
async def gen_gateway(real_gateway, lora_replicas):
    pools = [{"name": "gen", "workers": [s.url for s in lora_replicas]}]
    return await real_gateway(pools, auth={"admin_keys": [ADMIN_KEY]})


@pytest.fixture
async def embed_gateway(real_gateway, embed_server):
    return await real_gateway([{"name": "embed", "workers": [embed_server.url]}])


def _cases(server: str) -> list[ApiCase]:
    return [c for c in CASES if c.server == server]


async def test_generating_routes_answer_as_the_worker(gen_gateway, lora_replicas) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        for case in _cases("generate"):
            direct = await ask_async(client, lora_replicas[0].url, case.case, f"direct-{case.name}")
            via = await ask_async(client, gen_gateway.url, case.case, f"via-{case.name}")
            assert via["status"] == direct["status"], case.name
            if "unknown" not in case.name:  # the gateway answers an unknown model itself (its own 404)
                assert api_shape(via, case.case) == api_shape(direct, case.case), case.name


async def test_pooling_routes_answer_as_the_worker(embed_gateway, embed_server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        for case in _cases("embed"):
            direct = await ask_async(client, embed_server.url, case.case, f"direct-{case.name}")
            via = await ask_async(client, embed_gateway.url, case.case, f"via-{case.name}")
            assert via["status"] == direct["status"], case.name
            if "unknown" not in case.name:  # the gateway answers an unknown model itself (its own 404)
                assert api_shape(via, case.case) == api_shape(direct, case.case), case.name
        oai = openai.AsyncOpenAI(base_url=f"{embed_gateway.url}/v1", api_key="unused", timeout=120)
        got = await oai.embeddings.create(model=MODEL_NAME, input=["hello world", "bye"])
        assert [d.index for d in got.data] == [0, 1] and len(got.data[0].embedding) == 128


async def test_stored_responses_come_back_from_either_replica(gen_gateway, lora_replicas) -> None:
    oai = openai.AsyncOpenAI(base_url=f"{gen_gateway.url}/v1", api_key="unused", timeout=120)
    made = []
    for i in range(4):
        if i % 2:
            made.append(await oai.responses.create(model=MODEL_NAME, input=f"say {i}", max_output_tokens=4))
        else:
            stream = await oai.responses.create(model=MODEL_NAME, input=f"say {i}", max_output_tokens=4, stream=True)
            events = [e async for e in stream]
            assert events[0].type == "response.created" and events[-1].type == "response.completed"
            made.append(events[-1].response)
    homes = {gen_gateway.gateway.responses.home(r.id) for r in made}
    assert homes == {s.url for s in lora_replicas}  # both replicas hold some (least outstanding alternates)
    for r in made:
        fetched = await oai.responses.retrieve(r.id)
        assert fetched.id == r.id and fetched.output_text == r.output_text


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    created: int
    owned_by: str


async def test_models_and_adapters(gen_gateway, lora_replicas) -> None:
    oai = openai.AsyncOpenAI(base_url=f"{gen_gateway.url}/v1", api_key="unused", timeout=120)
    cards = [StrictModel.model_validate(m.model_dump()) for m in (await oai.models.list()).data]
    async with httpx.AsyncClient(timeout=120) as client:
        raw = {m["id"]: m for m in (await client.get(f"{gen_gateway.url}/v1/models")).json()["data"]}
        worker = {m["id"]: m for m in (await client.get(f"{lora_replicas[0].url}/v1/models")).json()["data"]}
        assert {c.id for c in cards} == {MODEL_NAME, ADAPTER}
        assert raw[ADAPTER]["parent"] == MODEL_NAME and raw[MODEL_NAME].keys() == worker[MODEL_NAME].keys()
        # An adapter loaded on one replica only: every request for it goes there.
        load = {"lora_name": "only-one", "lora_path": str(LORA_DIR)}
        assert (await client.post(f"{lora_replicas[1].url}/v1/load_lora_adapter", json=load)).status_code == 200
        ep = next(e for e in gen_gateway.gateway.endpoints if e.url == lora_replicas[1].url)
        for _ in range(100):
            if "only-one" in ep.model_ids:
                break
            await asyncio.sleep(0.1)
        body = {"model": "only-one", "prompt": "hi", "max_tokens": 2}
        for _ in range(4):
            assert (await client.post(f"{gen_gateway.url}/v1/completions", json=body)).status_code == 200
        await client.post(f"{lora_replicas[1].url}/v1/unload_lora_adapter", json={"lora_name": "only-one"})
        # Loaded through the gateway: on both replicas, listed at once.
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        load = {"lora_name": "both", "lora_path": str(LORA_DIR)}
        resp = await client.post(f"{gen_gateway.url}/v1/load_lora_adapter", json=load, headers=admin)
        assert resp.status_code == 200, resp.text
        listed = [m["id"] for m in (await client.get(f"{gen_gateway.url}/v1/models")).json()["data"]]
        assert "both" in listed
        unload = await client.post(
            f"{gen_gateway.url}/v1/unload_lora_adapter", json={"lora_name": "both"}, headers=admin
        )
        assert unload.status_code == 200


async def test_vllm_bench_serve_aligns_through_the_gateway(gen_gateway) -> None:
    argv = [
        "-c", BENCH_SERVE,
        "--base-url", gen_gateway.url, "--model", MODEL_NAME, "--tokenizer", str(MODEL_DIR),
        "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", "4",
        "--num-prompts", "4", "--seed", "0",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        PYTHON, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=OFFLINE
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 300)  # the gateway serves from this loop meanwhile
    out = stdout.decode(errors="replace")
    assert proc.returncode == 0, out[-2000:]
    assert "/tokenize unavailable" not in out
    assert "Successful requests:" in out
