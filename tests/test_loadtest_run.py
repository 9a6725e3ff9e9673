"""`pd-gateway loadtest` against simulated workers serving on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from loadtest.cli import main as loadtest_main
from loadtest.client import Record
from loadtest.runner import LoadSpec, run_load
from loadtest.tokens import WordCounter
from loadtest.workloads import Shape, make_workload
from tests.conftest import wait_until

SHAPE = Shape(mean_input_tokens=30, stddev_input_tokens=5, mean_output_tokens=12, stddev_output_tokens=3)


def workload() -> object:
    return make_workload("random", SHAPE, WordCounter(), seed=1)


def max_overlap(records: list[Record]) -> int:
    edges = sorted(
        itertools.chain(((r.start, 1) for r in records), ((r.end, -1) for r in records)), key=lambda e: (e[0], e[1])
    )
    live = best = 0
    for _, step in edges:
        live += step
        best = max(best, live)
    return best


async def test_closed_loop_runs_n_streams_and_counts_every_token(sim) -> None:
    server = await sim(itl_ms=5)
    spec = LoadSpec(
        urls=[f"{server.url}/v1/chat/completions"],
        model="sim-model",
        concurrency=3,
        max_requests=12,
        extra={"stream_options": {"include_usage": True}},
    )
    result = await run_load(spec, workload())
    assert len(result.records) == 12 and all(r.ok for r in result.records)
    assert max_overlap(result.records) == 3
    assert server.stats.requests_total == 12
    for rec in result.records:  # the sim's tokens are words: the count must equal the server's own usage
        assert WordCounter().count(rec.text) == rec.usage_output_tokens == len(rec.token_times)
    assert server.stats.last_request_body["ignore_eos"] is True


async def test_rate_mode_is_open_loop(sim) -> None:
    server = await sim(itl_ms=20)  # 12 tokens: ~0.24 s a request, arrivals every ~10 ms
    spec = LoadSpec(
        urls=[f"{server.url}/v1/completions"],
        model="sim-model",
        api="completions",
        rate=100.0,
        concurrency=None,
        max_requests=15,
    )
    result = await run_load(spec, workload())
    assert len(result.records) == 15 and all(r.ok for r in result.records)
    assert max_overlap(result.records) > 3  # arrivals do not wait for answers
    assert "prompt" in server.stats.last_request_body


async def test_warmup_is_sent_but_not_recorded(sim) -> None:
    server = await sim()
    spec = LoadSpec(
        urls=[f"{server.url}/v1/chat/completions"], model="sim-model", concurrency=2, max_requests=4, warmup=3
    )
    result = await run_load(spec, workload())
    assert len(result.records) == 4 and server.stats.requests_total == 7


async def test_duration_limit_ends_an_unbounded_run(sim) -> None:
    server = await sim(itl_ms=2)
    spec = LoadSpec(
        urls=[f"{server.url}/v1/chat/completions"], model="sim-model", concurrency=2, max_requests=None, duration_s=0.3
    )
    result = await run_load(spec, workload())
    assert result.records and all(r.ok for r in result.records)


async def test_round_robin_over_base_urls(sim) -> None:
    servers = [await sim(), await sim()]
    spec = LoadSpec(
        urls=[f"{s.url}/v1/chat/completions" for s in servers], model="sim-model", concurrency=4, max_requests=10
    )
    result = await run_load(spec, workload())
    assert [s.stats.requests_total for s in servers] == [5, 5]
    assert Counter(r.url for r in result.records) == {u: 5 for u in spec.urls}


async def test_errors_are_counted_and_the_first_printed_with_the_servers_message(sim) -> None:
    good, broken = await sim(), await sim(fail_after_tokens=3)
    urls = [f"{good.url}/v1/chat/completions", f"{broken.url}/v1/chat/completions", "http://127.0.0.1:1/v1/x"]
    errors = io.StringIO()
    spec = LoadSpec(urls=urls, model="sim-model", concurrency=3, max_requests=9, show_errors=2)
    result = await run_load(spec, workload(), errors=errors)
    assert len(result.records) == 9
    assert Counter(r.ok for r in result.records) == {True: 3, False: 6}
    assert len(errors.getvalue().splitlines()) == 2
    wrong_model = LoadSpec(urls=urls[:1], model="no-such-model", concurrency=1, max_requests=2)
    errors = io.StringIO()
    result = await run_load(wrong_model, workload(), errors=errors)
    assert [r.error_code for r in result.records] == [404, 404]
    assert "The model `no-such-model` does not exist." in errors.getvalue()


async def test_cli_writes_llmperf_results_plots_and_a_table(
    sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await sim(itl_ms=1)
    argv = [
        "--base-url",
        f"{server.url}/v1;{server.url}/v1",
        "--model",
        "sim-model",
        "--max-requests",
        "8",
        "--concurrency",
        "2",
        "--mean-input-tokens",
        "40",
        "--mean-output-tokens",
        "10",
        "--stddev-output-tokens",
        "2",
        "--results-dir",
        str(tmp_path),
        "--workload",
        "multi-turn",
    ]
    assert await asyncio.to_thread(loadtest_main, argv) == 0
    out = capsys.readouterr().out
    assert "TTFT (s)" in out and "loadtest: finished: done 8/8 errors 0" in out  # stdout is not a tty here
    summary = json.loads((tmp_path / "sim-model_40_10_summary.json").read_text())
    assert summary["results_num_completed_requests"] == 8 and summary["results_ttft_s_quantiles_p50"] > 0
    rows = json.loads((tmp_path / "sim-model_40_10_individual_responses.json").read_text())
    assert [r["number_output_tokens"] for r in rows] == [
        r["usage_completion_tokens"] or r["number_output_tokens"] for r in rows
    ]
    assert (tmp_path / "sim-model_40_10_over_time.png").read_bytes().startswith(b"\x89PNG")
    assert server.stats.last_request_body["user"].startswith("session-")


async def test_ctrl_c_ends_the_run_and_keeps_the_results(sim, tmp_path: Path) -> None:
    server = await sim(itl_ms=5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest",
        "--base-url",
        f"{server.url}/v1",
        "--model",
        "sim-model",
        "--max-requests",
        "0",
        "--timeout",
        "120",
        "--concurrency",
        "2",
        "--mean-output-tokens",
        "20",
        "--results-dir",
        str(tmp_path),
        "--no-plots",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await wait_until(lambda: server.stats.completed >= 4, timeout_s=30)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"interrupted" in err
    summary = json.loads(next(tmp_path.glob("*_summary.json")).read_text())
    assert summary["results_num_completed_requests"] >= 4 and summary["results_number_errors"] == 0


async def test_a_server_without_ignore_eos_gets_requests_without_it() -> None:
    """An OpenAI-like server that rejects vLLM's ignore_eos (400), as some do: the run drops the field."""
    from aiohttp import web

    seen: list[bool] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append("ignore_eos" in body)
        if "ignore_eos" in body:
            return web.json_response({"error": {"message": "Unrecognized request argument: ignore_eos"}}, status=400)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":" hi"}}]}\n\ndata: [DONE]\n\n')
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        errors = io.StringIO()
        spec = LoadSpec(urls=[f"http://127.0.0.1:{port}/v1/chat/completions"], model="m", concurrency=1, max_requests=3)
        result = await run_load(spec, workload(), errors=errors)
    finally:
        await runner.cleanup()
    assert all(r.ok for r in result.records) and len(result.records) == 3
    assert seen == [True, False, False, False] and "rejects ignore_eos" in errors.getvalue()
