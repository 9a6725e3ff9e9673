"""The simulated worker answers the vLLM routes besides completions and chat in the shape real
vLLM 0.32 answered them (tests/fixtures/vllm_api_parity.json, recorded by
scripts/record_vllm_api_parity.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.parity_api_cases import ADAPTER, CASES, ApiCase, api_shape, ask_async, load_fixture
from tests.parity_cases import MAX_MODEL_LEN, MODEL
from workers.sim import SimServer

StartSim = Callable[..., Awaitable[SimServer]]
RECORDED = load_fixture()["answers"]


def test_fixture_covers_every_case() -> None:
    assert sorted(RECORDED) == sorted(c.name for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_sim_answers_like_vllm(sim: StartSim, client: httpx.AsyncClient, case: ApiCase) -> None:
    s = await sim(model=MODEL, max_model_len=MAX_MODEL_LEN)
    load = {"lora_name": ADAPTER, "lora_path": "/adapters/tiny-lora"}
    assert (await client.post(f"{s.url}/v1/load_lora_adapter", json=load)).status_code == 200
    answer = await ask_async(client, s.url, case.case)
    assert api_shape(answer, case.case) == api_shape(RECORDED[case.name], case.case)
