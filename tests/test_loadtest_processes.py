"""`pd-gateway loadtest --processes N`: the split of the load, and runs merged from worker processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy
import pytest

from loadtest.cli import main as loadtest_main
from loadtest.processes import WorkloadSpec, check, child_seed, interleave, run_processes, shares, split
from loadtest.runner import LoadSpec
from loadtest.tokens import WordCounter
from loadtest.workloads import Shape, make_workload
from tests.conftest import wait_until

SHAPE = Shape(mean_input_tokens=30, stddev_input_tokens=8, mean_output_tokens=12, stddev_output_tokens=3)


def test_split_adds_up_exactly_and_evenly() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 4) == [1, 1, 0, 0]
    assert split(0, 2) == [0, 0]
    for total, parts in itertools.product(range(30), range(1, 7)):
        got = split(total, parts)
        assert sum(got) == total and max(got) - min(got) <= 1


def test_shares_split_streams_requests_warmup_rate_and_keep_the_url_round_robin() -> None:
    urls = [f"http://127.0.0.1:{p}/v1/chat/completions" for p in (1, 2, 3)]
    spec = LoadSpec(urls=urls, model="m", concurrency=5, max_requests=301, warmup=3, seed=7)
    parts = shares(spec, WorkloadSpec("random", SHAPE, None, True, 7), 2)
    assert [p.spec.concurrency for p in parts] == [3, 2]
    assert [p.spec.max_requests for p in parts] == [151, 150]
    assert [p.spec.warmup for p in parts] == [2, 1]
    seeds = [p.spec.seed for p in parts]
    assert len(set(seeds)) == 2 and seeds == [child_seed(7, 0), child_seed(7, 1)] and child_seed(8, 0) != seeds[0]
    # measured request i goes to child i % 2 and, as in one process, to URL i % 3
    sent = [(i, next(cycles[i % 2])) for cycles in [[itertools.cycle(p.spec.urls) for p in parts]] for i in range(12)]
    assert all(url == urls[i % 3] for i, url in sent)
    assert spec.concurrency == 5 and spec.max_requests == 301  # the caller's spec is left as it was
    rated = shares(LoadSpec(urls=urls, model="m", rate=9.0, concurrency=None, max_requests=None), parts[0].workload, 3)
    assert [(p.spec.rate, p.spec.concurrency, p.spec.max_requests) for p in rated] == [(3.0, None, None)] * 3


def test_children_send_the_same_requests_overall() -> None:
    def stream() -> Any:
        return make_workload("multi-turn", SHAPE, WordCounter(), 3, turns=3, sessions=4)

    warmup, measured, n = 5, 17, 3
    single = list(itertools.islice(stream(), warmup + measured))
    limits, warmups = split(measured, n), split(warmup, n)
    children = [list(itertools.islice(interleave(stream(), k, n, warmup), warmups[k] + limits[k])) for k in range(n)]
    warm = [r.prompt for k, c in enumerate(children) for r in c[: warmups[k]]]
    timed = [r.prompt for k, c in enumerate(children) for r in c[warmups[k] :]]
    assert sorted(warm) == sorted(r.prompt for r in single[:warmup])
    assert sorted(timed) == sorted(r.prompt for r in single[warmup:])
    assert [r.prompt for r in children[1][warmups[1] :]] == [r.prompt for r in single[warmup + 1 :: n]]


def test_check_refuses_more_processes_than_streams() -> None:
    spec = LoadSpec(urls=["http://x/v1/chat/completions"], model="m", concurrency=2)
    assert check(spec, 2) is None and check(spec, 0) is not None
    assert "below --processes" in (check(spec, 3) or "")


def _argv(urls: str, out: Path, *extra: str) -> list[str]:
    return [
        "--base-url",
        urls,
        "--model",
        "sim-model",
        "--mean-input-tokens",
        "30",
        "--mean-output-tokens",
        "10",
        "--stddev-output-tokens",
        "2",
        "--results-dir",
        str(out),
        *extra,
    ]


def _load(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = json.loads((directory / "sim-model_30_10_summary.json").read_text())
    rows = json.loads((directory / "sim-model_30_10_individual_responses.json").read_text())
    return summary, rows


async def test_two_processes_make_one_run_like_a_single_process_run(
    sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = [await sim(itl_ms=2), await sim(itl_ms=2)]
    urls = ";".join(f"{s.url}/v1" for s in servers)
    load = ["--max-requests", "9", "--concurrency", "3", "--warmup", "2", "--seed", "5"]
    assert await asyncio.to_thread(loadtest_main, _argv(urls, tmp_path / "one", *load)) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(loadtest_main, _argv(urls, tmp_path / "two", *load, "--processes", "2")) == 0
    out = capsys.readouterr().out
    assert "TTFT (s)" in out and "loadtest: finished: done 9/9 errors 0" in out
    assert [s.stats.requests_total for s in servers] == [12, 10]  # two runs of 2 + 9 requests, 6 and 5 each

    one, one_rows = _load(tmp_path / "one")
    summary, rows = _load(tmp_path / "two")
    assert summary.keys() == one.keys() and summary["num_processes"] == 2
    assert len(rows) == 9 and all(r.keys() == one_rows[0].keys() for r in rows)
    assert [r["start_s"] for r in rows] == sorted(r["start_s"] for r in rows) and rows[0]["start_s"] >= 0
    # the same request stream overall: the prompts' lengths and the URLs they went to
    assert Counter(r["number_input_tokens"] for r in rows) == Counter(r["number_input_tokens"] for r in one_rows)
    assert Counter(r["url"] for r in rows) == Counter(r["url"] for r in one_rows)
    # the summary is llmperf's computation over the merged records
    assert summary["results_num_completed_requests"] == 9 and summary["results_number_errors"] == 0
    for key in ("ttft_s", "end_to_end_latency_s", "inter_token_latency_s", "number_output_tokens"):
        values = [r[key] for r in rows]
        assert summary[f"results_{key}_mean"] == pytest.approx(statistics.fmean(values))
        for q in (25, 50, 90, 99):
            assert summary[f"results_{key}_quantiles_p{q}"] == pytest.approx(numpy.percentile(values, q))
    wall = 60 * 9 / summary["results_num_completed_requests_per_min"]
    assert wall >= max(r["start_s"] + r["end_to_end_latency_s"] for r in rows) - 1e-6
    assert summary["results_mean_output_throughput_token_per_s"] == pytest.approx(
        sum(r["number_output_tokens"] for r in rows) / wall
    )
    for png in ("over_time", "distributions"):
        found = list((tmp_path / "two").glob(f"*{png}*.png"))
        assert found and all(p.read_bytes().startswith(b"\x89PNG") for p in found)


async def test_errors_are_counted_across_processes_and_the_first_printed_once(
    sim, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """capfd: the worker processes' own stderr is captured too, so a failure printed twice would show."""
    good, broken = await sim(itl_ms=1), await sim(itl_ms=1, fail_after_tokens=3)
    urls = f"{good.url}/v1;{broken.url}/v1"  # with 2 processes, each sends to one of them
    load = ["--max-requests", "8", "--concurrency", "2", "--processes", "2", "--show-errors", "2", "--no-plots"]
    assert await asyncio.to_thread(loadtest_main, _argv(urls, tmp_path, *load)) == 0
    err = capfd.readouterr().err
    summary, rows = _load(tmp_path)
    assert Counter(r["error_code"] is None for r in rows) == {True: 4, False: 4}
    assert summary["results_number_errors"] == 4 and summary["results_num_completed_requests"] == 4
    assert err.count("request failed") == 2 and broken.url.split("//")[1] in err


async def test_rate_mode_spreads_the_arrivals(sim, tmp_path: Path) -> None:
    server = await sim(itl_ms=1)
    load = ["--rate", "40", "--max-requests", "10", "--processes", "2", "--no-plots"]
    assert await asyncio.to_thread(loadtest_main, _argv(f"{server.url}/v1", tmp_path, *load)) == 0
    summary, rows = _load(tmp_path)
    assert len(rows) == 10 == server.stats.requests_total and summary["results_num_completed_requests"] == 10
    assert summary["request_rate"] == 40.0


async def test_a_failing_worker_process_is_reported_not_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    spec = LoadSpec(urls=["http://127.0.0.1:1/v1/chat/completions"], model="m", concurrency=2, max_requests=2)
    parts = shares(spec, WorkloadSpec("no-such-workload", SHAPE, None, True, 1), 2)
    with pytest.raises(RuntimeError, match="no worker process finished"):
        await asyncio.to_thread(run_processes, parts)
    err = capsys.readouterr().err
    assert err.count("unknown workload 'no-such-workload'") == 2 and "worker process 1 failed" in err


async def test_too_many_processes_for_the_streams_is_refused(tmp_path: Path, capsys) -> None:
    argv = _argv("http://127.0.0.1:1/v1", tmp_path, "--concurrency", "2", "--processes", "3")
    assert await asyncio.to_thread(loadtest_main, argv) == 2
    assert "below --processes" in capsys.readouterr().err


async def test_ctrl_c_stops_every_process_and_keeps_the_results(sim, tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the workers ignore it, the parent stops them."""
    server = await sim(itl_ms=5)
    argv = _argv(f"{server.url}/v1", tmp_path, "--max-requests", "0", "--timeout", "120", "--processes", "2")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest",
        *argv,
        "--concurrency",
        "4",
        "--no-plots",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    await wait_until(lambda: server.stats.completed >= 8, timeout_s=60)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert err.count(b"interrupted") == 1 and b"Traceback" not in err
    summary, rows = _load(tmp_path)
    assert summary["results_num_completed_requests"] >= 8 and summary["results_number_errors"] == 0
    assert len(rows) == server.stats.requests_total  # every request sent was recorded, none after the end
