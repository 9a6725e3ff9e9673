"""The simulated worker answers every case of tests/parity_cases.py in the shape real vLLM
0.32 answered it (tests/fixtures/vllm_parity.json, recorded by scripts/record_vllm_parity.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.conftest import wait_until
from tests.parity_cases import CASES, MAX_MODEL_LEN, MODEL, Case, ask_async, comparable, load_fixture
from workers.sim import SimServer

StartSim = Callable[..., Awaitable[SimServer]]
RECORDED = load_fixture()["answers"]


def test_fixture_covers_every_case() -> None:
    assert sorted(RECORDED) == sorted(c.name for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_sim_answers_like_vllm(sim: StartSim, client: httpx.AsyncClient, case: Case) -> None:
    s = await sim(model=MODEL, max_model_len=MAX_MODEL_LEN)
    answer = await ask_async(client, s.url, case)
    ours, theirs = comparable(answer, RECORDED[case.name], case)
    assert ours == theirs
    await wait_until(lambda: s.stats.in_flight == 0)  # every request ends, errors too
