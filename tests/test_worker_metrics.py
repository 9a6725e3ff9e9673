"""Workers' own load reports (/metrics) folded into the gateway's load score."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics_page import MetricsPage, label
from gateway.pool import Endpoint
from gateway.worker_metrics import fold, parse_report
from tests.conftest import wait_until

PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
"""


def test_report_sums_engines_and_keeps_the_fullest_cache() -> None:
    report = parse_report(PAGE)
    assert report is not None
    assert (report.running, report.waiting, report.kv_usage) == (5, 4, 0.5)
    assert parse_report("# TYPE other gauge\nother 1.0\n") is None


VLLM_PAGE = (Path(__file__).parent / "fixtures" / "vllm_metrics.txt").read_bytes()  # vLLM 0.32 CPU, 51 KB


def _reference(page: bytes, name: str) -> list[float]:
    """prometheus_client's full parse, the gateway's parser before it read only the lines it needs."""
    return [s.value for f in text_string_to_metric_families(page.decode()) if f.name == name for s in f.samples]


def test_a_real_vllm_page_reads_as_prometheus_client_reads_it() -> None:
    """On vLLM's own page (histograms, `_by_reason` gauges whose names extend the wanted ones,
    HELP/TYPE lines naming them), the line scan finds the same samples as a full parse."""
    page = VLLM_PAGE
    for name, value in (
        ("num_requests_running", b"3.0"),
        ("num_requests_waiting", b"2.0"),
        ("kv_cache_usage_perc", b"0.125"),
    ):
        sample = b'vllm:%s{engine="0",model_name="tiny"} ' % name.encode()
        page = page.replace(sample + b"0.0", sample + value)
    report = parse_report(page)
    assert report is not None
    assert (report.running, report.waiting, report.kv_usage) == (3, 2, 0.125)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert MetricsPage(page).values(name) == _reference(page, name)
    # vLLM's cache_config_info: 512 blocks of 128 tokens (its kv_cache_size_tokens label agrees)
    assert report.cache_tokens == 512 * 128 == int(_config_labels(page)["kv_cache_size_tokens"])


def _config_labels(page: bytes) -> dict[str, str]:
    line = next(MetricsPage(page).lines("vllm:cache_config_info"))
    return {name: label(line, name) or "" for name in ("kv_cache_size_tokens", "block_size")}


def test_sample_lines_are_found_wherever_they_are_and_however_written() -> None:
    """A metric's samples are one group (the text format's rule), wherever it sits on the page."""
    page = MetricsPage(
        b"vllm:num_requests_running 4\n"  # the first line, no labels
        b'vllm:num_requests_running{model_name="a b}c",engine="1"} 2.0 1712345678000\n'  # brace in a value; timestamp
        b'vllm:num_requests_running{engine="2"} not-a-number\n'
        b"vllm:num_requests_running_total 99\n"
        b"# HELP vllm:num_requests_waiting {not a sample} 7\n"
        b"# TYPE vllm:num_requests_waiting gauge\n"
        b'vllm:num_requests_waiting{engine="0"} 1e1\n'
        b'vllm:num_requests_waiting{engine="1"} 3'  # the last line, no newline
    )
    assert page.values("vllm:num_requests_running") == [4.0, 2.0]
    assert page.values("vllm:num_requests_waiting") == [10.0, 3.0]
    assert page.values("vllm:kv_cache_usage_perc") == []
    line = b'x{_block_size_resolved="True",block_size="128",hash_block_size="None"} 1'
    assert (label(line, "block_size"), label(line, "size"), label(line, "hash_block_size")) == ("128", None, "None")


def test_cache_size_sums_engines_and_skips_an_unsized_one() -> None:
    info = 'vllm:cache_config_info{{block_size="16",engine="{e}",num_gpu_blocks="{n}"}} 1.0\n'
    page = PAGE + "".join(info.format(e=e, n=n) for e, n in ((0, 1000), (1, 24), (2, "None")))
    report = parse_report(page)
    assert report is not None and report.cache_tokens == 1024 * 16
    assert parse_report(PAGE) == parse_report(PAGE.encode()) and parse_report(PAGE).cache_tokens == 0  # type: ignore[union-attr]


def test_fold_counts_only_what_is_not_this_gateways() -> None:
    ep = Endpoint("http://w", "replica", "p")
    fold(ep, parse_report(PAGE), own=6)
    assert (ep.foreign, ep.kv_usage) == (3, 0.5)
    fold(ep, parse_report(PAGE), own=20)
    assert ep.foreign == 0
    fold(ep, None, own=0)
    assert (ep.foreign, ep.kv_usage) == (0, 0.0)


async def test_another_clients_requests_raise_the_load_the_gateway_sees(sim, gateway) -> None:
    """A stream sent to the worker around the gateway (as another gateway replica would)
    shows up as foreign load, and least_outstanding then prefers the other worker."""
    busy, idle = await sim(itl_ms=50.0), await sim()
    gw = await gateway(
        [{"name": "p", "workers": [busy.url, idle.url]}], worker_metrics={"interval_s": 0.05, "timeout_s": 1.0}
    )
    router = gw.gateway
    ep_busy, ep_idle = router.pools[0].endpoints
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 200, "stream": True}
    async with httpx.AsyncClient(timeout=30) as c:
        async with c.stream("POST", busy.url + "/v1/completions", json=body) as resp:
            chunks = resp.aiter_bytes()  # held: a dropped iterator closes the stream
            await anext(chunks)
            await wait_until(lambda: ep_busy.foreign == 1)
            await wait_until(lambda: ep_idle.healthy)
            assert ep_idle.foreign == 0
            policy = router.pools[0].policies["replica"]
            choices = {policy.choose(_Plain(), [ep_busy, ep_idle]).url for _ in range(4)}
            assert choices == {idle.url}


async def test_the_gateway_learns_each_workers_cache_size_from_its_metrics(sim, gateway) -> None:
    """The simulator reports its KV capacity as vLLM does (cache_config_info), and the poller
    records it per endpoint: the size a prefix policy's view takes without being told."""
    small, large = await sim(prefix_cache_blocks=100, block_size=16), await sim(prefix_cache_blocks=4096)
    gw = await gateway(
        [{"name": "p", "workers": [small.url, large.url]}], worker_metrics={"interval_s": 0.05, "timeout_s": 1.0}
    )
    ep_small, ep_large = gw.gateway.pools[0].endpoints
    await wait_until(lambda: ep_small.cache_tokens > 0 and ep_large.cache_tokens > 0)
    assert (ep_small.cache_tokens, ep_large.cache_tokens) == (1600, 4096 * 16)


class _Plain:
    model, route, prompt_tokens, session_key, prefix_text = "sim-model", "completions", 1, None, "hi"
