"""The llmperf comparison scripts: both tools get the same load, and the comparison reads any load."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pytest

from bench.llmperf_compare import Pair, report
from bench.llmperf_side_by_side import SHAPE, _llmperf_cmd, _loadtest_cmd, shape_flag


def _flags(cmd: list[str]) -> dict[str, str]:
    return {a: b for a, b in itertools.pairwise(cmd) if a.startswith("--") and not b.startswith("--")}


def test_both_tools_get_the_same_request_shape_and_sampling_params(tmp_path: Path) -> None:
    sampling = json.dumps({"temperature": 0.7, "top_k": 50, "ignore_eos": True})
    args = argparse.Namespace(
        llmperf_python="python3.10", model="tiny", base_url="http://h/v1", tokenizer="tok", concurrency=4,
        requests=200, seed=1, loadtest_procs=1, loadtest_processes=1, sampling_params=sampling,
        mean_input_tokens=1024, stddev_input_tokens=0, mean_output_tokens=100, stddev_output_tokens=10,
    )  # fmt: skip
    loadtest_cmd = _loadtest_cmd(args, tmp_path, 0)
    llmperf, loadtest = _flags(_llmperf_cmd(args, tmp_path)), _flags(loadtest_cmd)
    for name in [*map(shape_flag, SHAPE), "--additional-sampling-params"]:
        assert llmperf[name] == loadtest[name], name
    assert loadtest["--mean-input-tokens"] == "1024" and loadtest["--additional-sampling-params"] == sampling
    # loadtest adds ignore_eos by itself unless told not to: llmperf's body has only what the params say
    assert "--no-ignore-eos" in loadtest_cmd


def test_comparison_of_a_fixed_input_length_reads_no_difference(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"ttft_s": t, "inter_token_latency_s": 0.01, "end_to_end_latency_s": 1.0 + t} for t in (0.1, 0.2, 0.3)]
    for r in rows:
        r.update(number_output_tokens=100, number_input_tokens=1024)
    report(Pair("fixed", rows, [{**r, "ttft_s": r["ttft_s"] * 1.1} for r in rows]))
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert lines["number_input_tokens"][-2:] == ["1.000", "0.00"]
    assert lines["ttft_s"][-2] == "1.100"
