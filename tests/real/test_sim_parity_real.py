"""The simulator-parity fixture still holds what real vLLM answers, and the simulator's
/metrics families are named, typed and labelled as real vLLM's."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.parity_cases import CASES, Case, ask, comparable, load_fixture
from workers.sim import start_sim

pytestmark = pytest.mark.real
VllmServer = object  # tests/real/conftest.py's fixture object (conftest is not imported)
RECORDED = load_fixture()


def test_fixture_was_recorded_with_this_vllm(vllm_colocated: VllmServer) -> None:
    version = httpx.get(f"{vllm_colocated.url}/version", timeout=30).json()["version"]
    assert version == RECORDED["vllm_version"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vllm_still_answers_the_recorded_shape(vllm_colocated: VllmServer, case: Case) -> None:
    with httpx.Client(timeout=120) as client:
        answer = ask(client, vllm_colocated.url, case)
    now, recorded = comparable(answer, RECORDED["answers"][case.name], case)
    assert now == recorded


def _families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    out = {}
    for f in text_string_to_metric_families(text):
        labels = frozenset(k for s in f.samples for k in s.labels)
        out[f.name] = (f.type, labels)
    return out


async def test_sim_metrics_match_vllm_families(vllm_colocated: VllmServer) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        real = _families((await client.get(f"{vllm_colocated.url}/metrics")).text)
        sim = await start_sim({"model": "tiny"})
        try:
            ours = _families((await client.get(f"{sim.url}/metrics")).text)
        finally:
            await sim.close()
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits"} <= set(ours)
    for name, (mtype, labels) in ours.items():
        assert name in real, f"{name} is not a vLLM metric"
        assert (mtype, labels) == real[name], name
