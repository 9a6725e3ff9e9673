"""Golden command lines per engine generation on Trainium.

neuron-legacy: the AWS Neuron fork of vLLM 0.7.2 (`--device neuron --use-v2-block-manager
--override-neuron-config`), as the Neuron DP tutorial's deploy_vllm_endpoint.sh runs it
(tests/test_plan.py runs that script itself). vllm-neuron: upstream vLLM with the vllm-neuron
plugin, which rejects --device and takes NxDI overrides in `--additional-config`; PD pools use
vLLM's NixlConnector with NIXL's LIBFABRIC backend (EFA) through host memory (docs/kubernetes.md
cites the documentation these come from).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.plan import plan
from workers.topology import TopologyError, load_topology, parse_topology

TOPOLOGIES = Path(__file__).resolve().parent.parent / "deploy" / "topologies"
OVERRIDE = {"on_device_sampling_config": {"do_sample": True, "global_topk": 64}}


def _dp2(engine: str):
    data = load_topology(TOPOLOGIES / "dp2-tp32.yaml").model_dump(exclude_none=True)
    data["pools"][0]["engine"] = engine
    return parse_topology(data)


def test_neuron_legacy_dp2_tp32_golden() -> None:
    w = plan(_dp2("neuron-legacy")).workers[1]
    assert w.argv == [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/ubuntu/model_hf/Llama-3.3-70B-Instruct/", "--served-model-name", "llama-3.3-70b",
        "--max-num-seqs", "4", "--max-model-len", "12800", "--tensor-parallel-size", "32",
        "--device", "neuron", "--use-v2-block-manager",
        "--override-neuron-config", json.dumps(OVERRIDE),
        "--port", "8001",
    ]  # fmt: skip
    assert w.env == {
        "NEURON_RT_INSPECT_ENABLE": "0",
        "NEURON_RT_VIRTUAL_CORE_SIZE": "2",
        "VLLM_NEURON_FRAMEWORK": "neuronx-distributed-inference",
        "NEURON_COMPILED_ARTIFACTS": "/ubuntu/traced_model/Llama-3.3-70B-Instruct/",
        "NEURON_RT_VISIBLE_CORES": "32-63",
        "VLLM_RPC_TIMEOUT": "100000",
    }


def test_vllm_neuron_dp2_tp32_golden() -> None:
    w = plan(_dp2("vllm-neuron")).workers[1]
    assert w.argv == [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/ubuntu/model_hf/Llama-3.3-70B-Instruct/", "--served-model-name", "llama-3.3-70b",
        "--max-num-seqs", "4", "--max-model-len", "12800", "--tensor-parallel-size", "32",
        "--additional-config", json.dumps({"override_neuron_config": OVERRIDE}),
        "--port", "8001",
    ]  # fmt: skip
    assert w.env == {
        "NEURON_RT_INSPECT_ENABLE": "0",
        "NEURON_RT_VIRTUAL_CORE_SIZE": "2",
        "NEURON_COMPILED_ARTIFACTS": "/ubuntu/traced_model/Llama-3.3-70B-Instruct/",
        "NEURON_RT_VISIBLE_CORES": "32-63",
        "VLLM_RPC_TIMEOUT": "100000",
    }


def test_vllm_neuron_dp4_tp16_golden() -> None:
    workers = plan(load_topology(TOPOLOGIES / "dp4-tp16.yaml")).workers
    assert [(w.port, w.cores) for w in workers] == [(8000, "0-15"), (8001, "16-31"), (8002, "32-47"), (8003, "48-63")]
    assert workers[2].argv == [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/Llama-3.3-70B-Instruct", "--served-model-name", "llama-3.3-70b",
        "--max-num-seqs", "8", "--max-model-len", "8192", "--tensor-parallel-size", "16",
        "--additional-config", json.dumps({"override_neuron_config": OVERRIDE}),
        "--port", "8002",
    ]  # fmt: skip
    assert workers[2].env["NEURON_RT_VISIBLE_CORES"] == "32-47"


def test_vllm_neuron_nixl_1p1d_golden() -> None:
    prefill, decode = plan(load_topology(TOPOLOGIES / "nixl-1p1d-trn2.yaml")).workers
    kv = {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_consumer",
        "kv_buffer_device": "cpu",
        "kv_connector_extra_config": {"backends": ["LIBFABRIC"]},
    }
    assert decode.argv == [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/Llama-3.3-70B-Instruct", "--served-model-name", "llama-3.3-70b",
        "--max-num-seqs", "4", "--max-model-len", "8192", "--tensor-parallel-size", "64",
        "--kv-transfer-config", json.dumps(kv),
        "--port", "8200",
    ]  # fmt: skip
    assert decode.env == {
        "NEURON_RT_INSPECT_ENABLE": "0",
        "NEURON_RT_VIRTUAL_CORE_SIZE": "2",
        "NEURON_COMPILED_ARTIFACTS": "/models/traced/llama-3.3-70b-tp64-b4/",
        "VLLM_RPC_TIMEOUT": "100000",
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "10.0.0.11",
        "VLLM_NIXL_SIDE_CHANNEL_PORT": "5600",
    }
    assert json.loads(prefill.argv[prefill.argv.index("--kv-transfer-config") + 1])["kv_role"] == "kv_producer"


def test_no_trainium_worker_of_vllm_neuron_gets_legacy_flags() -> None:
    for name in ("dp4-tp16.yaml", "nixl-1p1d-trn2.yaml"):
        for w in plan(load_topology(TOPOLOGIES / name)).workers:
            assert not {"--device", "--use-v2-block-manager", "--override-neuron-config"} & set(w.argv)
            assert "VLLM_NEURON_FRAMEWORK" not in w.env


def test_neuron_connector_needs_the_legacy_engine() -> None:
    data = load_topology(TOPOLOGIES / "di-1p1d-multi.yaml").model_dump(exclude_none=True)
    data["pools"][0]["engine"] = "vllm-neuron"
    with pytest.raises(TopologyError, match="NeuronConnector"):
        parse_topology(data)
